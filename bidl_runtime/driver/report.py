"""What a run measured: one :class:`RunReport`, built once at the end of a run, ``to_json()``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from bidl_models.datasets.base import topk_accuracy

from bidl_runtime.plan.grid_plan import GridPlan


@dataclass(frozen=True)
class RunReport:
    """Outputs, timings and per-cell / per-edge figures of one run of a grid.

    ``outputs[i]`` is sample i's result (the last step's output of the last segment); ``fed_at`` /
    ``done_at`` are ``perf_counter`` times when it entered the grid and when its result arrived;
    ``startup`` the start-up phases in seconds (see :class:`bidl_runtime.driver.startup.StartupClock`);
    ``verify`` the comparison with the single-device run of the same programs, if asked for, and
    ``verify_cost`` what it took (its processes' CPU seconds, how long after the last result it
    finished, how long the stream waited for it: see :mod:`bidl_runtime.driver.reference`);
    ``restarts`` one entry per replica restart (its cells with kind and cause, the replayed sample ids,
    seconds from detection to rewired and to the replica's next result); ``resumed`` how many of
    ``outputs`` / ``rejected`` came from a journal of an earlier run;
    ``trace`` what a traced run wrote (see :func:`bidl_runtime.driver.trace.write_trace`);
    ``duplicated`` results that arrived for a sample already taken (dropped; 0 by design).
    """

    plan: GridPlan
    backend: str
    transport: str
    outputs: dict[int, Tensor]
    labels: dict[int, int]
    rejected: dict[int, str]
    fed_at: dict[int, float]
    done_at: dict[int, float]
    wall_s: float
    cells: list[dict]
    driver_channels: dict
    startup: dict[str, Any] = field(default_factory=dict)
    verify: Optional[dict] = None
    restarts: list[dict] = field(default_factory=list)
    resumed: int = 0
    trace: Optional[dict] = None
    verify_cost: Optional[dict] = None
    duplicated: int = 0

    # ------------------------------------------------------------------------- derived figures

    @property
    def samples(self) -> int:
        return len(self.outputs)

    @property
    def replayed(self) -> int:
        """Samples replayed after restarts (a sample replayed twice counts twice)."""
        return sum(len(r["replayed"]) for r in self.restarts)

    @property
    def latencies_s(self) -> dict[int, float]:
        """First slice in -> result out, per sample."""
        return {i: self.done_at[i] - self.fed_at[i] for i in self.done_at}

    @property
    def startup_s(self) -> float:
        """The grid's start-up (cells spawned, programs loaded, channels wired)."""
        return float(self.startup.get("grid_s", 0.0))

    @property
    def steady_samples(self) -> int:
        """Results that arrived after the first one (with --batch N, the first message's N arrive together)."""
        times = sorted(self.done_at.values())
        return sum(1 for t in times if t > times[0]) if times else 0

    @property
    def steady_s(self) -> float:
        """First result to last result."""
        times = sorted(self.done_at.values())
        return times[-1] - times[0] if len(times) > 1 else 0.0

    def window(self, skip: int) -> tuple[int, float]:
        """(results, seconds) of a steady-state window: the results after the first ``skip``
        (the pipeline's fill), timed from the ``skip``-th result's arrival to the last one's.
        With n replicas use ``skip = n``: results come in rounds of n, so the window spans whole rounds."""
        times = sorted(self.done_at.values())
        if skip < 1 or len(times) <= skip:
            raise ValueError(f"{len(times)} results: too few for a window after skipping {skip}")
        return len(times) - skip, times[-1] - times[skip - 1]

    @property
    def samples_per_s(self) -> float:
        if self.steady_samples > 0 and self.steady_s > 0:
            return self.steady_samples / self.steady_s
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        """Time-step frames per second (the user guide's unit)."""
        return self.samples_per_s * self.plan.T

    def latency_ms(self, q: float) -> Optional[float]:
        xs = sorted(self.latencies_s.values())
        if not xs:
            return None
        return 1e3 * xs[min(len(xs) - 1, int(math.ceil(q * len(xs))) - 1)]

    @property
    def accuracy(self) -> Optional[float]:
        """Top-1 accuracy as a fraction (see :meth:`accuracy_pct` for the test CLI's percent)."""
        pct = self.accuracy_pct(1)
        return None if pct is None else pct / 100

    def accuracy_pct(self, k: int = 1) -> Optional[float]:
        """Top-``k`` accuracy in percent over the labelled samples with a result (None without
        labels, or for k > 1 with fewer than ``k`` classes): the test CLI's ``accuracy_top-k``,
        computed by the same function (:func:`bidl_models.datasets.base.topk_accuracy`, ties as
        ``torch.topk`` breaks them)."""
        done = sorted(i for i in self.labels if i in self.outputs)
        if not done:
            return None
        scores = torch.stack([self.outputs[i].reshape(-1, self.outputs[i].shape[-1])[0].float() for i in done])
        if k > 1 and scores.shape[1] < k:
            return None
        return topk_accuracy(scores, torch.tensor([int(self.labels[i]) for i in done]), (k,))[f"accuracy_top-{k}"]

    def accuracies(self) -> dict[str, float]:
        """``{'accuracy_top-1': percent, 'accuracy_top-5': percent}`` (the keys that apply)."""
        return {f"accuracy_top-{k}": v for k in (1, 5) if (v := self.accuracy_pct(k)) is not None}

    @property
    def startup_total_s(self) -> Optional[float]:
        """Seconds from the start (the command's process start for ``python -m bidl_runtime.run``, the
        grid's creation for the library) until the grid was ready: ``startup['total_s']``."""
        return self.startup.get("total_s")

    def edges(self) -> list[dict]:
        """Per-edge figures, joining each channel's sender and receiver stats by channel name:
        ``copy_ms`` (sender: copy into the slot + sent event), ``queue_ms`` (sent event -> ready
        at the receiver, including time the receiver was still busy), ``recv_wait_ms`` (receiver
        blocked waiting), ``credit_wait_ms`` (sender blocked waiting for a free slot)."""
        senders, receivers = {}, {}
        for c in self.cells + [self.driver_channels]:
            for st in c.get("channels_out", {}).values():
                senders[st["channel"]] = st
            for st in c.get("channels_in", {}).values():
                receivers[st["channel"]] = st
        kinds = {e.name: e.kind for e in self.plan.edges}
        out = []
        for name, rx in receivers.items():
            tx = senders.get(name, {})
            out.append({"edge": name, "kind": kinds.get(name), "transport": rx.get("transport"),
                        "messages": rx.get("messages", 0), "bytes": rx.get("bytes", 0),
                        "copy_ms": tx.get("busy_ms_median"), "queue_ms": rx.get("latency_ms_median"),
                        "recv_wait_ms": rx.get("blocked_ms_median"), "credit_wait_ms": tx.get("blocked_ms_median")})
        return out

    # --------------------------------------------------------------------------------- output

    def summary(self) -> str:
        p = self.plan
        lines = [
            f"config {p.config}: grid {p.rows}x{p.cols} x{p.replicas} replica(s), T={p.T} "
            f"(slices {list(p.slices)}), segments {[list(s) for s in p.splits]}, backend {self.backend}, "
            f"transport {self.transport}",
            f"samples: {self.samples} done" + (f" ({self.resumed} from the journal)" if self.resumed else "")
            + f", {len(self.rejected)} rejected, wall {self.wall_s:.2f} s "
            f"(grid start-up {self.startup_s:.1f} s before that"
            + (f"; {self.startup['total_s']:.1f} s from the command's start" if "total_s" in self.startup else "")
            + ")",
            f"throughput: {self.frames_per_s:.1f} time-step frames/s, {self.samples_per_s:.2f} samples/s "
            f"(steady state: {self.steady_samples} samples over {self.steady_s:.2f} s)",
        ]
        p50, p99 = self.latency_ms(0.5), self.latency_ms(0.99)
        if p50 is not None:
            lines.append(f"latency per sample (first slice in -> result out): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        accs = self.accuracies()
        if accs:
            lines.append(f"accuracy on {len(self.labels)} labelled samples: "
                         + "  ".join(f"{k} {v:.2f}%" for k, v in accs.items()))
        for i, why in sorted(self.rejected.items()):
            lines.append(f"rejected {why}" if why.startswith(f"sample {i}:") else f"rejected sample {i}: {why}")
        if self.restarts:
            lines.append(f"restarts: {len(self.restarts)}, {self.replayed} in-flight samples replayed; "
                         "every output taken once")
            for r in self.restarts:
                what = "; ".join(f"{c['cell']} {c['kind']}: {c['cause']}" + ("" if c["restarted"] else " (rewired)")
                                 for c in r["cells"])
                again = (f", streaming again after {r['streaming_again_s']:.1f} s"
                         if r.get("streaming_again_s") is not None else "")
                lines.append(f"  at {r['detected_after_s']:.1f} s: {what}; replica {r['replica']} rewired "
                             f"{r['rewired_s']:.1f} s after detection{again}; replayed {_ids(r['replayed'])}")
        head = f"{'cell':<26}{'samples':>8}{'busy %':>8}{'chunk ms':>10}"
        lines += ["", head, "-" * len(head)]
        for c in sorted(self.cells, key=lambda c: (c["replica"], c["row"], c["col"])):
            med = c.get("step_ms_median")
            lines.append(f"{c['cell']:<26}{c['samples']:>8}{c['busy_pct']:>8.1f}"
                         f"{(f'{med:.2f}' if med is not None else '-'):>10}")
        edges = self.edges()
        if edges:
            def ms(v: Optional[float]) -> str:
                return f"{v:.3f}" if v is not None else "-"
            head = (f"{'edge (medians in ms)':<34}{'via':>5}{'msgs':>6}{'MB':>9}{'copy':>8}{'queue':>9}"
                    f"{'rx wait':>9}{'tx wait':>9}")
            lines += ["", head, "-" * len(head)]
            for e in edges:
                lines.append(f"{e['edge']:<34}{e['transport'] or '-':>5}{e['messages']:>6}{e['bytes'] / 1e6:>9.2f}"
                             f"{ms(e['copy_ms']):>8}{ms(e['queue_ms']):>9}{ms(e['recv_wait_ms']):>9}"
                             f"{ms(e['credit_wait_ms']):>9}")
        if self.verify is not None:
            v, cost = self.verify, self.verify_cost or {}
            verdict = "outputs equal reference" if v["equal"] == v["compared"] else "OUTPUTS DIFFER FROM REFERENCE"
            lines += ["", f"{verdict}: {v['equal']}/{v['compared']} samples bit-exact "
                          f"(max abs diff {v['max_abs_diff']:.3g}) vs the single-device run of "
                          f"{cost.get('compares', 'the same artifacts')}"]
            if cost:
                lines.append(verification_line(cost))
        if self.trace is not None:
            t = self.trace
            lines += ["", f"trace: {t['json']} ({t['events']} events, {t['dropped']} dropped; open in "
                          f"https://ui.perfetto.dev), timeline {t['png'] or t.get('png_missing')}"]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON types (outputs as lists)."""
        p = self.plan
        return {
            "config": p.config, "grid": [p.rows, p.cols], "replicas": p.replicas, "T": p.T,
            "slices": list(p.slices), "splits": [list(s) for s in p.splits], "backend": self.backend,
            "transport": self.transport, "samples": self.samples, "rejected": {str(k): v for k, v in self.rejected.items()},
            "wall_s": self.wall_s, "frames_per_s": self.frames_per_s, "samples_per_s": self.samples_per_s,
            "latency_ms_p50": self.latency_ms(0.5), "latency_ms_p99": self.latency_ms(0.99),
            **self.accuracies(), "startup_s": self.startup_total_s, "grid_startup_s": self.startup_s,
            "verify": self.verify, "startup": self.startup, "cells": self.cells, "trace": self.trace,
            "verify_cost": self.verify_cost,
            "restarts": [{k: v for k, v in r.items() if not k.endswith("_at")} for r in self.restarts],
            "replayed": self.replayed, "resumed": self.resumed, "duplicated": self.duplicated,
            "edges": self.edges(),
            "outputs": {str(i): y.reshape(-1).tolist() for i, y in sorted(self.outputs.items())},
        }


def verification_line(cost: dict) -> str:
    """What verifying cost, in one line (the grid's throughput above is its own)."""
    where = ("beside the grid at idle priority, normal priority once it had streamed"
             if cost["priority"] == "idle while streaming" else "after the grid had streamed")
    waited = (f"; the stream waited {cost['stream_waited_s']:.1f} s for it (inputs past --verify memory)"
              if cost.get("stream_waited_s", 0) >= 0.05 else "")
    n = cost["processes"]
    line = (f"verification: {n} reference process{'es' if n > 1 else ''} {where}: {cost['cpu_s']:.1f} CPU s, "
            f"finished {cost['after_streaming_s']:.1f} s after the last result{waited}")
    check = cost.get("compiled_vs_exported")
    if check:
        line += (f"\ncompiled programs vs the exported ones they were built from (seeded random chunks): "
                 f"{'every spike equal' if check['spikes_equal'] else 'SPIKES DIFFER'}, "
                 f"max abs diff {check['max_abs_diff']:.3g}")
    return line


def _ids(ids: list[int]) -> str:
    """``'none'``, ``'sample 3'``, ``'4 samples (12..15)'``."""
    if not ids:
        return "none"
    if len(ids) == 1:
        return f"sample {ids[0]}"
    return f"{len(ids)} samples ({min(ids)}..{max(ids)})"
