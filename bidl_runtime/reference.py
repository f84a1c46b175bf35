"""The single-device run of the grid's own artifacts: what every grid output must equal, bit for bit."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from bidl_models.specs import torch_dtype

from .plan import GridPlan


class Reference:
    """Runs the plan's programs on one device: slice by slice, segment by segment, with the state
    carried over. Loads the exported programs (not the cells' fast form), on first use.

    ``threads`` must be the cells' intra-op thread count: CPU kernels may sum in another order
    with another thread count, and the comparison is bit-exact.
    """

    def __init__(self, plan: GridPlan, threads: int = 1):
        self.plan, self.threads = plan, threads
        self._arts: Optional[dict[tuple[int, int], Any]] = None

    def _artifacts(self) -> dict[tuple[int, int], Any]:
        if self._arts is None:
            from compile.artifact import load_artifact
            self._arts = {}
            for c in self.plan.cells:
                if c.replica == 0 and (c.col, c.chunk_len) not in self._arts:
                    src = c.program.source
                    if not hasattr(src, "path"):
                        raise ValueError("the reference run needs compiled artifacts (backend cpu)")
                    self._arts[(c.col, c.chunk_len)] = load_artifact(src.path)
        return self._arts

    def output(self, x: Tensor) -> Tensor:
        """The last step's output ``[B, nclass]`` for ``x`` ``[T, B, ...]``."""
        from compile.artifact import zero_state
        arts = self._artifacts()
        states: list[Optional[dict]] = [None] * self.plan.cols
        t0 = 0
        y = x
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for t in self.plan.slices:
                    h = x[t0:t0 + t]
                    for s in range(self.plan.cols):
                        art = arts[(s, t)]
                        if states[s] is None:
                            states[s] = zero_state(art, h.shape[1])
                        h, states[s] = art.run(h, states[s])
                    y = h
                    t0 += t
        finally:
            torch.set_num_threads(before)
        return y[-1]

    def compare(self, outputs: Mapping[int, Tensor], inputs: Mapping[int, Tensor]) -> dict[str, Any]:
        """``{'equal', 'compared', 'max_abs_diff'}`` of every grid output against this run."""
        equal = compared = 0
        worst = 0.0
        first = self._artifacts()[(0, self.plan.slices[0])]
        dtype = torch_dtype(first.input_dtype)
        rank = len(first.input_spec.shape)        # [B, ...] per step: a sample [T, ...] has this rank
        for i, y in outputs.items():
            x = inputs[i]
            ref = self.output((x.unsqueeze(1) if x.dim() == rank else x).to(dtype))
            compared += 1
            if torch.equal(ref, y):
                equal += 1
            else:
                worst = max(worst, float((ref - y).abs().max()))
        return {"equal": equal, "compared": compared, "max_abs_diff": worst}
