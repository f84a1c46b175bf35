"""Preparing a run: segment sources per (column, chunk length), data, the reference run.

``cpu`` cells load compiled artifacts (``compile.compile_config``: compiled or reused from the
cache); ``emulated`` cells need only the segments' real tensor specs and their pace, taken from
the device profile and each segment's FLOPs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.config import Config, build_segments
from bidl_models.segments import block_costs
from bidl_models.specs import TensorSpec

from .devices import ArtifactSource, DeviceProfile, EmulatedSource
from .driver import SegmentRuntime
from .plan import GridPlan, config_input_shape


def chunk_spec(name: str, per_step: TensorSpec, t: int) -> TensorSpec:
    """``[B, ...]`` per step -> ``[t, B, ...]`` per chunk."""
    return TensorSpec(name, (t,) + tuple(per_step.shape), per_step.dtype)


def emulated_segments(cfg: Config, plan: GridPlan, profile: DeviceProfile, batch: int = 1,
                      model_in_shape: Optional[Sequence[int]] = None) -> dict[tuple[int, int], SegmentRuntime]:
    """Real chunk/state specs of every (segment, chunk length) and their paced step time."""
    shape = tuple(model_in_shape or config_input_shape(cfg) or ())
    seg0 = build_segments(cfg, model_in_shape=shape or None)[0]
    net = seg0.backbone
    shape = shape or net.default_input_shape()
    costs = block_costs(net, shape)
    out: dict[tuple[int, int], SegmentRuntime] = {}
    for s, (a, b) in enumerate(plan.splits):
        seg = net.segment(a, b)
        sp = seg.specs(batch, shape)
        step_s = profile.seconds_per_step(sum(costs[a:b]))
        for t in plan.chunk_lens:
            x, y = chunk_spec("x", sp.input, t), chunk_spec("y", sp.output, t)
            out[(s, t)] = SegmentRuntime(EmulatedSource(x, y, sp.state, step_s), x, y, sp.state)
    return out


def compiled_segments(cfg: Config, plan: GridPlan, checkpoint: Optional[str | Path], out: str | Path,
                      batch: int = 1, force: bool = False, verbose: bool = True,
                      progress: bool = True) -> tuple[dict[tuple[int, int], SegmentRuntime], dict]:
    """Compile (or reuse) the artifacts the plan needs; returns the runtimes and the loaded
    artifacts (driver-side, for the reference run)."""
    from compile import compile_config, load_artifact
    from bidl_models.config import model_segment_configs

    splits = None if len(model_segment_configs(cfg)) > 1 else [list(s) for s in plan.splits]
    out = Path(out) / cache_key(cfg, checkpoint, plan.splits)
    compiled = compile_config(cfg, checkpoint, rows=plan.rows, splits=splits, out=out, batch=batch,
                              force=force, verbose=verbose, progress=progress,
                              in_shape=config_input_shape(cfg))
    runtimes: dict[tuple[int, int], SegmentRuntime] = {}
    arts: dict[tuple[int, int], Any] = {}
    for s in range(plan.cols):
        for t in plan.chunk_lens:
            path = compiled.path(s, t)
            art = load_artifact(path)
            arts[(s, t)] = art
            x = chunk_spec("x", art.input_spec.with_batch(batch), t)
            x = TensorSpec("x", x.shape, art.input_dtype)
            y = chunk_spec("y", art.output_spec.with_batch(batch), t)
            state = tuple(sp.with_batch(batch) for sp in art.state_specs)
            runtimes[(s, t)] = SegmentRuntime(ArtifactSource(str(path)), x, y, state)
    return runtimes, arts


def cache_key(cfg: Config, checkpoint: Optional[str | Path], splits: Sequence[Sequence[int]]) -> str:
    """The runtime's artifact directory for a model, its weights and its cut: the runtime compiles
    on its own, so models that differ (another T, split or checkpoint) get their own directory
    instead of meeting ``compile``'s refusal of a mismatched artifact."""
    import hashlib

    from bidl_models.checkpoint import file_sha256
    from compile.build import model_sha256
    weights = file_sha256(checkpoint) if checkpoint else "seeded:0"
    text = f"{model_sha256(cfg)}|{weights}|{[list(s) for s in splits]}"
    return f"{cfg.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def reference_output(arts: Mapping[tuple[int, int], Any], plan: GridPlan, x: Tensor,
                     threads: int = 1) -> Tensor:
    """The single-device run of the same artifacts: slice by slice, segment by segment, with the
    state carried over; returns the last step's output ``[B, nclass]`` (``x``: ``[T, B, ...]``).

    ``threads`` must be the cells' intra-op thread count: CPU kernels may sum in another order
    with another thread count, and the comparison is bit-exact.
    """
    states: list[Optional[dict]] = [None] * plan.cols
    t0 = 0
    y = x
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for t in plan.slices:
            h = x[t0:t0 + t]
            for s in range(plan.cols):
                art = arts[(s, t)]
                if states[s] is None:
                    from compile import zero_state
                    states[s] = zero_state(art, h.shape[1])
                h, states[s] = art.run(h, states[s])
            y = h
            t0 += t
    torch.set_num_threads(before)
    return y[-1]


def synthetic_samples(T: int, shape: Sequence[int], n: Optional[int], seed: int = 0,
                      rate: float = 0.2) -> Iterator[Tensor]:
    """Seeded random event-count frames ``[T, C, H, W]`` (for configs without usable data)."""
    g = torch.Generator().manual_seed(seed)
    i = 0
    while n is None or i < n:
        yield (torch.rand((T,) + tuple(shape), generator=g) < rate).to(torch.float32)
        i += 1


def dataset_samples(cfg: Config, n: Optional[int]) -> Optional[Iterator[tuple[Tensor, int]]]:
    """``(img [T, C, H, W] float32, label)`` from the config's test set, or None if unavailable."""
    try:
        from bidl_models.datasets import build_dataset
    except ImportError:
        return None
    data = cfg.get("data", {})
    test = data.get("test") if isinstance(data, Mapping) else None
    if not test:
        return None
    try:
        ds = build_dataset(dict(test))
    except (FileNotFoundError, ValueError, OSError):
        return None

    def gen() -> Iterator[tuple[Tensor, int]]:
        total = len(ds) if n is None else min(n, len(ds))
        for i in range(total):
            item = ds[i]
            img = item["img"] if isinstance(item, Mapping) else item[0]
            img = torch.as_tensor(img)
            label = item.get("gt_label") if isinstance(item, Mapping) else item[1]
            if label is None:
                label = ds.get_gt_labels()[i] if hasattr(ds, "get_gt_labels") else -1
            yield img.to(torch.float32) if img.dtype != torch.uint8 else img, int(torch.as_tensor(label))
    return gen()


def default_threads(cells: int) -> int:
    """Intra-op threads per cell so that the cells on this machine share its cores."""
    return max(1, (os.cpu_count() or 1) // max(1, cells))
