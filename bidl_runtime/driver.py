"""The driver: builds the grid of cell actors, wires their channels, streams samples through it.

Each accepted sample is assigned to a replica round-robin and cut along T into the plan's slices;
slice g goes to cell (g, 0) of that replica. Results are collected from the last cell of the last
row in sample order. At most ``max_inflight`` samples are in the grid (back-pressure reaches the
data iterator, which is only advanced when a slot frees). Bad samples (shape, dtype, NaN/Inf) are
rejected with a reason naming the sample and the stream goes on. A cell that raises or dies stops
the run within ``poll_s`` + Ray's failure detection, with an error naming the cell.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from queue import Queue
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.specs import TensorSpec, torch_dtype

from .cell import Cell, CellError, CellSpec
from .channels import ChannelConfig, ChannelError, ChannelTimeout, attach_sender, create_receiver, new_secret
from .devices import ArtifactSource, DeviceProfile, EmulatedSource
from .plan import CellPlan, GridPlan


@dataclass
class RuntimeConfig:
    """All runtime tunables in one place."""

    backend: str = "cpu"                 # cpu | emulated | cuda
    transport: str = "auto"              # auto (shm on one node, tcp across) | shm | tcp
    depth: int = 2                       # slots per channel
    batch: int = 1                       # samples per message (the chip's batch is 1)
    max_inflight: Optional[int] = None   # samples inside the grid; None: 2 x rows x replicas
    threads_per_cell: int = 1
    poll_s: float = 0.2                  # health-check granularity of the driver's waits
    result_timeout_s: float = 300.0      # longest wait for one result before the run is failed
    idle_timeout_s: float = 600.0
    metrics: bool = True
    profile: DeviceProfile = field(default_factory=DeviceProfile)
    faults: dict = field(default_factory=dict)   # test hook: {(replica, row, col): ('raise'|'exit', sample)}
    channel_secret: Optional[str] = field(default=None, repr=False)  # keys the channel handshakes; None: a Grid makes one

    def channel(self, transport: str) -> ChannelConfig:
        return ChannelConfig(transport=transport, depth=self.depth, send_timeout_s=max(self.poll_s, 0.05),
                             recv_timeout_s=max(self.poll_s, 0.05), secret=self.channel_secret)


@dataclass
class SegmentRuntime:
    """What the grid needs of segment s for chunk length t: a loadable source and its layouts."""

    source: ArtifactSource | EmulatedSource
    x: TensorSpec          # chunk input [t, B, ...]
    y: TensorSpec          # chunk output [t, B, ...]
    state: tuple[TensorSpec, ...]


class RunError(RuntimeError):
    """The run failed (a cell raised or died, or a wait expired); names the cell where known."""


@dataclass
class RunReport:
    """Everything a run measured."""

    plan: GridPlan
    backend: str
    transport: str
    outputs: dict[int, Tensor]
    labels: dict[int, int]
    rejected: dict[int, str]
    latencies_s: dict[int, float]
    wall_s: float
    steady_s: float
    steady_samples: int
    cells: list[dict]
    verify: Optional[dict] = None
    driver_channels: dict = field(default_factory=dict)
    startup_s: float = 0.0
    fed_at: dict[int, float] = field(default_factory=dict)    # perf_counter when sample i entered
    done_at: dict[int, float] = field(default_factory=dict)   # perf_counter when its result arrived

    def window(self, skip: int) -> tuple[int, float]:
        """(results, seconds) of a steady-state window: the results after the first ``skip``
        (the pipeline's fill), timed from the ``skip``-th result's arrival to the last one's.
        With n replicas use ``skip = n``: results come in rounds of n, so the window spans whole rounds."""
        times = sorted(self.done_at.values())
        if skip < 1 or len(times) <= skip:
            raise ValueError(f"{len(times)} results: too few for a window after skipping {skip}")
        return len(times) - skip, times[-1] - times[skip - 1]

    @property
    def samples(self) -> int:
        return len(self.outputs)

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
        if not self.labels:
            return None
        hits = sum(int(self.outputs[i].reshape(-1, self.outputs[i].shape[-1])[0].argmax()) == lab
                   for i, lab in self.labels.items() if i in self.outputs)
        return hits / max(1, sum(1 for i in self.labels if i in self.outputs))

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
        out = []
        for name, rx in receivers.items():
            tx = senders.get(name, {})
            out.append({"edge": name, "transport": rx.get("transport"), "messages": rx.get("messages", 0),
                        "bytes": rx.get("bytes", 0), "copy_ms": tx.get("busy_ms_median"),
                        "queue_ms": rx.get("latency_ms_median"), "recv_wait_ms": rx.get("blocked_ms_median"),
                        "credit_wait_ms": tx.get("blocked_ms_median")})
        return out

    def summary(self) -> str:
        p = self.plan
        lines = [
            f"config {p.config}: grid {p.rows}x{p.cols} x{p.replicas} replica(s), T={p.T} "
            f"(slices {list(p.slices)}), segments {[list(s) for s in p.splits]}, backend {self.backend}, "
            f"transport {self.transport}",
            f"samples: {self.samples} done, {len(self.rejected)} rejected, wall {self.wall_s:.2f} s "
            f"(grid start-up {self.startup_s:.1f} s before that)",
            f"throughput: {self.frames_per_s:.1f} time-step frames/s, {self.samples_per_s:.2f} samples/s "
            f"(steady state: {self.steady_samples} samples over {self.steady_s:.2f} s)",
        ]
        p50, p99 = self.latency_ms(0.5), self.latency_ms(0.99)
        if p50 is not None:
            lines.append(f"latency per sample (first slice in -> result out): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        if self.accuracy is not None:
            lines.append(f"accuracy (top-1 on {len(self.labels)} labelled samples): {100 * self.accuracy:.1f}%")
        for i, why in sorted(self.rejected.items()):
            lines.append(f"rejected sample {i}: {why}")
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
            v = self.verify
            verdict = "outputs equal reference" if v["equal"] == v["compared"] else "OUTPUTS DIFFER FROM REFERENCE"
            lines += ["", f"{verdict}: {v['equal']}/{v['compared']} samples bit-exact "
                          f"(max abs diff {v['max_abs_diff']:.3g}) vs the single-device run of the same artifacts"]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ the grid


def node_devices() -> list[str]:
    """Device id -> node id for the connected Ray cluster: nodes in order (the driver's first),
    each contributing its ``bidl_device`` resource count."""
    import ray
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: (n["NodeID"] != here, n["NodeID"]))
    out: list[str] = []
    for n in nodes:
        out += [n["NodeID"]] * int(n.get("Resources", {}).get("bidl_device", 0))
    return out


class CellPool:
    """Idle cell actors kept between grids (one per device id and node), so that runs one after
    another (benchmarks, sweeps) reconfigure processes instead of starting new ones."""

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], Any] = {}
        self.busy: dict[tuple[str, int], Any] = {}

    def acquire(self, c: CellPlan) -> tuple[Any, bool]:
        """An actor for cell ``c`` (placed on its node); True if it is new."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        key = (c.node, c.device)
        if key in self.idle:
            a = self.busy[key] = self.idle.pop(key)
            return a, False
        opts: dict[str, Any] = dict(num_cpus=0, max_concurrency=3, resources={"bidl_device": 1},
                                    name=f"pool-dev{c.device}-{c.node[:8]}")
        if c.node != "local":
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(c.node, soft=False)
        a = self.busy[key] = ray.remote(Cell).options(**opts).remote()
        return a, True

    def release(self, healthy: bool) -> None:
        """Return every busy actor (healthy run) or kill them (failed run)."""
        import ray
        for key, a in self.busy.items():
            if healthy:
                self.idle[key] = a
            else:
                _quiet(lambda a=a: ray.kill(a, no_restart=True))
        self.busy = {}

    def shutdown(self) -> None:
        import ray
        for a in list(self.idle.values()) + list(self.busy.values()):
            _quiet(lambda a=a: ray.kill(a, no_restart=True))
        self.idle, self.busy = {}, {}


class Grid:
    """Cell actors and channels for a plan; ``run`` streams samples; ``close`` tears it all down.

    With a :class:`CellPool`, actors come from (and go back to) the pool instead of being created
    and killed per grid.
    """

    def __init__(self, plan: GridPlan, segments: dict[tuple[int, int], SegmentRuntime],
                 rcfg: Optional[RuntimeConfig] = None, pool: Optional[CellPool] = None):
        self.plan, self.segments = plan, segments
        self.pool = pool
        self._healthy = False
        self.rcfg = rcfg or RuntimeConfig()
        if self.rcfg.channel_secret is None:  # one secret per run, to the cells through their CellSpec
            self.rcfg = replace(self.rcfg, channel_secret=new_secret())
        self.actors: dict[tuple[int, int, int], Any] = {}
        self.loops: dict[Any, CellPlan] = {}
        self.feeds: dict[tuple[int, int], Any] = {}      # (replica, row) -> sender into cell (row, 0)
        self.results: dict[int, Any] = {}                # replica -> receiver from the last cell
        self._closed = False
        self._started = False
        # sample -> (replica, input) until its result is back: what a restarted cell would replay
        self.inflight: dict[int, tuple[int, Tensor]] = {}

    # ---------------------------------------------------------------------------------- set-up

    def _transport(self, a: str, b: str) -> str:
        t = self.rcfg.transport
        if t == "auto":
            return "shm" if a == b else "tcp"
        return t

    def start(self) -> "Grid":
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        p, r = self.plan, self.rcfg
        here = ray.get_runtime_context().get_node_id()
        actor_cls = ray.remote(Cell)
        configs: list[Any] = []

        def node_of(c: CellPlan) -> str:
            return here if c.node == "local" else c.node

        for c in p.cells:
            seg = self.segments[(c.col, c.chunk_len)]
            src_node = here if c.col == 0 else node_of(p.cell(c.replica, c.row, c.col - 1))
            up_node = node_of(p.cell(c.replica, c.row - 1, c.col)) if c.row > 0 else node_of(c)
            spec = CellSpec(
                plan=c, rows=p.rows, cols=p.cols, backend=r.backend, source=seg.source,
                x_layout=(seg.x,), state_layout=seg.state,
                channel=r.channel(self._transport(src_node, node_of(c))),
                state_channel=r.channel(self._transport(up_node, node_of(c))),
                threads=r.threads_per_cell, idle_timeout_s=r.idle_timeout_s, poll_s=r.poll_s,
                metrics=r.metrics, fault=r.faults.get(c.key))
            if self.pool is not None:
                actor, _ = self.pool.acquire(c)
                configs.append(actor.configure.remote(spec))
                self.actors[c.key] = actor
                continue
            opts: dict[str, Any] = dict(name=c.name, num_cpus=0, max_concurrency=3,
                                        resources={"bidl_device": 1})
            if c.node != "local":
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(c.node, soft=False)
            self.actors[c.key] = actor_cls.options(**opts).remote(spec)
        self._started = True
        try:
            ray.get(configs, timeout=120)
            endpoints = dict(zip(self.actors, ray.get([a.open_inputs.remote() for a in self.actors.values()],
                                                      timeout=120)))
        except Exception as e:  # noqa: BLE001
            self.close()
            raise RunError(f"starting the grid's cells failed: {_cell_error_text(e)}") from None
        # the driver's result receivers (one per replica), from the last cell of the last row
        last_row, last_col = p.rows - 1, p.cols - 1
        for k in range(p.replicas):
            c = p.cell(k, last_row, last_col)
            seg = self.segments[(last_col, c.chunk_len)]
            layout = (TensorSpec("y", tuple(seg.y.shape[1:]), seg.y.dtype),)
            self.results[k] = create_receiver(f"driver:result[{k}]", layout,
                                              r.channel(self._transport(node_of(c), here)))
        wiring = []
        for c in p.cells:
            outs: dict[str, Any] = {}
            if c.col < p.cols - 1:
                outs["x"] = endpoints[(c.replica, c.row, c.col + 1)]["x"]
            elif c.row == p.rows - 1:
                outs["x"] = self.results[c.replica].descriptor
            if c.row < p.rows - 1:
                outs["state"] = endpoints[(c.replica, c.row + 1, c.col)]["state"]
            wiring.append(self.actors[c.key].connect.remote(outs))
        for c in p.cells:
            if c.col == 0:
                self.feeds[(c.replica, c.row)] = attach_sender(endpoints[c.key]["x"])
        try:
            ray.get(wiring, timeout=120)
        except Exception as e:  # noqa: BLE001
            self.close()
            raise RunError(f"wiring the grid's channels failed: {_cell_error_text(e)}") from None
        self.loops = {self.actors[c.key].loop.remote(): c for c in p.cells}
        return self

    # ---------------------------------------------------------------------------------- health

    def check_health(self, grace_s: float = 3.0) -> None:
        """Raise RunError naming the cell if any cell's loop ended (raised, died) before stop.

        A failure spreads (neighbours see a dead peer), so after the first one the driver waits
        ``grace_s`` for the others and blames the root cause: a dead process first, then a cell's
        own error, then channel failures caused by a neighbour.
        """
        import ray
        import ray.exceptions as rex
        done, _ = ray.wait(list(self.loops), num_returns=len(self.loops), timeout=0)
        if not done:
            return
        deadline = time.perf_counter() + grace_s
        while time.perf_counter() < deadline and len(done) < len(self.loops):
            more, _ = ray.wait(list(self.loops), num_returns=len(self.loops), timeout=0.25)
            if len(more) == len(done):
                break
            done = more
        failures = []
        for ref in done:
            cell = self.loops[ref]
            try:
                ray.get(ref, timeout=1)
                failures.append((3, cell, "stopped before the end of the stream"))
            except Exception as e:  # noqa: BLE001
                text = _cell_error_text(e)
                rank = 0 if isinstance(e, rex.RayActorError) else (2 if _is_channel_failure(text) else 1)
                failures.append((rank, cell, text))
        failures.sort(key=lambda f: (f[0], f[1].key))
        rank, cell, text = failures[0]
        others = f" ({len(failures) - 1} other cell(s) failed after it)" if len(failures) > 1 else ""
        raise RunError(f"{cell.name} failed: {text}{others}")

    # ------------------------------------------------------------------------------------ run

    def run(self, samples: Iterable, expected_shape: Sequence[int], progress: bool = True,
            total: Optional[int] = None) -> RunReport:
        """Stream ``samples`` (tensors ``[T, C, H, W]``, or ``(tensor, label)``) through the grid."""
        if not self._started:
            self.start()
        p, r = self.plan, self.rcfg
        max_inflight = r.max_inflight or 2 * p.rows * p.replicas
        slots = threading.Semaphore(max_inflight)
        order: deque[tuple[int, int]] = deque()           # (sample, replica) in feed order
        order_cv = threading.Condition()
        fed_at: dict[int, float] = {}
        labels: dict[int, int] = {}
        rejected: dict[int, str] = {}
        outputs: dict[int, Tensor] = {}
        latencies: dict[int, float] = {}
        done_at: dict[int, float] = {}
        state = {"feeding": True, "error": None, "fed": 0}
        stop = threading.Event()

        def send(sender, tensors, meta) -> None:
            while True:
                if stop.is_set():
                    raise RunError("run stopped")
                try:
                    sender.send(tensors, meta, timeout=r.poll_s)
                    return
                except ChannelTimeout:
                    continue

        # one thread per (replica, row) feeds that row's first cell, so a row that is still busy
        # with older samples never holds back the rows above it (each gets its slice when ready)
        queues: dict[tuple[int, int], Queue] = {key: Queue() for key in self.feeds}

        def row_feeder(key: tuple[int, int]) -> None:
            q, sender = queues[key], self.feeds[key]
            try:
                while True:
                    item = q.get()
                    if item is None:
                        return
                    i, chunk = item
                    send(sender, {"x": chunk}, {"kind": "data", "sample": i})
            except Exception as e:  # noqa: BLE001
                state["error"] = state["error"] or e
                stop.set()

        in_dtype = torch_dtype(self.segments[(0, p.slices[0])].x.dtype)
        starts = [sum(p.slices[:g]) for g in range(p.rows)]

        def feeder() -> None:
            try:
                nxt = 0
                for i, item in enumerate(samples):
                    x, label = (item if isinstance(item, tuple) else (item, None))
                    why = check_sample(x, expected_shape)
                    if why:
                        rejected[i] = f"sample {i}: {why}"
                        continue
                    while not slots.acquire(timeout=r.poll_s):
                        if stop.is_set():
                            return
                    k = nxt % p.replicas
                    nxt += 1
                    if label is not None:
                        labels[i] = int(label)
                    xb = x.unsqueeze(1) if x.dim() == len(expected_shape) else x
                    xb = xb.to(in_dtype)
                    fed_at[i] = time.perf_counter()
                    self.inflight[i] = (k, x)
                    with order_cv:
                        order.append((i, k))
                        order_cv.notify()
                    for g in range(p.rows):
                        queues[(k, g)].put((i, xb[starts[g]:starts[g] + p.slices[g]]))
                    state["fed"] += 1
                    if stop.is_set():
                        return
            except Exception as e:  # noqa: BLE001
                state["error"] = state["error"] or e
            finally:
                for q in queues.values():
                    q.put(None)
                state["feeding"] = False
                with order_cv:
                    order_cv.notify()

        row_threads = [threading.Thread(target=row_feeder, args=(key,), name=f"bidl-feed{key}", daemon=True)
                       for key in queues]
        for t in row_threads:
            t.start()
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="sample", desc=f"grid {p.rows}x{p.cols}", leave=False)
        t_start = time.perf_counter()
        first_result = last_result = None
        steady = 0
        th = threading.Thread(target=feeder, name="bidl-feeder", daemon=True)
        th.start()
        try:
            while True:
                with order_cv:
                    while not order and state["feeding"]:
                        order_cv.wait(timeout=r.poll_s)
                        if not order:
                            self.check_health()
                    if not order:
                        break
                    i, k = order.popleft()
                msg = self._wait_result(k, i)
                now = time.perf_counter()
                outputs[i] = msg.tensors["y"].clone()
                msg.release()
                slots.release()
                done_at[i] = now
                latencies[i] = now - fed_at[i]
                self.inflight.pop(i, None)
                if first_result is None:
                    first_result = now
                else:
                    steady += 1
                last_result = now
                if bar is not None:
                    bar.update(1)
            if state["error"] is not None:
                raise RunError(f"reading samples failed: {type(state['error']).__name__}: {state['error']}")
        except BaseException:
            stop.set()
            raise
        finally:
            if bar is not None:
                bar.close()
            th.join(timeout=5)
            for t in row_threads:
                t.join(timeout=5)
        wall = time.perf_counter() - t_start
        report = RunReport(p, r.backend, r.transport, outputs, labels, rejected, latencies, wall,
                           (last_result - first_result) if first_result and last_result else 0.0, steady, [])
        report.driver_channels = self.driver_stats()
        report.fed_at, report.done_at = dict(fed_at), done_at
        return report

    def driver_stats(self) -> dict:
        return {"channels_out": {f"feed{k}": s.stats.snapshot() for k, s in self.feeds.items()},
                "channels_in": {f"result{k}": r.stats.snapshot() for k, r in self.results.items()}}

    def _wait_result(self, replica: int, sample: int):
        waited = 0.0
        rec = self.results[replica]
        while True:
            try:
                msg = rec.recv(timeout=self.rcfg.poll_s)
            except ChannelTimeout:
                waited += self.rcfg.poll_s
                self.check_health()
                if waited > self.rcfg.result_timeout_s:
                    raise RunError(f"no result for sample {sample} from replica {replica} after "
                                   f"{waited:.0f} s") from None
                continue
            except ChannelError as e:
                self._health_after_channel_error(e)
            got = msg.meta.get("sample")
            if got != sample:
                msg.release()
                raise RunError(f"results out of order: expected sample {sample}, got {got}")
            return msg

    def _health_after_channel_error(self, e: Exception) -> None:
        """A channel broke: give Ray a moment to report which cell failed, then raise."""
        deadline = time.perf_counter() + 10.0
        while time.perf_counter() < deadline:
            self.check_health()
            time.sleep(self.rcfg.poll_s)
        raise RunError(f"a channel of the grid failed: {e}")

    # ------------------------------------------------------------------------------- shutdown

    def stop(self, timeout: float = 30.0) -> list[dict]:
        """Drain the grid with stop messages and return every cell's stats."""
        import ray
        for (k, g), s in self.feeds.items():
            try:
                s.send_control("stop", timeout=timeout)
            except Exception:  # noqa: BLE001 - a dead cell is reported by the loops below
                pass
        for k, rec in self.results.items():
            deadline = time.perf_counter() + timeout
            while time.perf_counter() < deadline:
                try:
                    msg = rec.recv(timeout=self.rcfg.poll_s)
                except ChannelTimeout:
                    continue
                except Exception:  # noqa: BLE001 - peer closed: the loop result tells why
                    break
                kind = msg.kind
                msg.release()
                if kind == "stop":
                    break
        refs = list(self.loops)
        try:
            stats = ray.get(refs, timeout=timeout)
        except Exception as e:  # noqa: BLE001
            raise RunError(f"stopping the grid failed: {_cell_error_text(e)}") from None
        finally:
            self.loops = {}
        self._healthy = True
        return stats

    def close(self) -> None:
        """Kill every cell actor and close the driver's channel ends (idempotent)."""
        if self._closed:
            return
        self._closed = True
        import ray
        for s in self.feeds.values():
            _quiet(s.close)
        if self.pool is not None:
            if self._healthy:
                _quiet(lambda: ray.get([a.close.remote() for a in self.actors.values()], timeout=30))
            self.pool.release(self._healthy)
        else:
            for a in self.actors.values():
                _quiet(lambda a=a: ray.kill(a, no_restart=True))
        for rec in self.results.values():
            _quiet(rec.close)

    def __enter__(self) -> "Grid":
        return self.start() if not self._started else self

    def __exit__(self, *exc) -> None:
        self.close()


def check_sample(x: Any, expected: Sequence[int]) -> Optional[str]:
    """Why a sample can't enter the grid (None if it can): type, shape, dtype, NaN/Inf."""
    if not isinstance(x, Tensor):
        return f"expected a torch.Tensor, got {type(x).__name__}"
    want = tuple(expected)
    if tuple(x.shape) != want and tuple(x.shape) != (want[0], 1) + want[1:]:
        return f"shape {list(x.shape)}, expected {list(want)} ([T, C, H, W])"
    if x.dtype not in (torch.float32, torch.uint8):
        return f"dtype {str(x.dtype).removeprefix('torch.')}, expected float32 (or uint8 event counts)"
    if x.dtype == torch.float32 and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        return f"{bad} NaN/Inf values"
    return None


def _cell_error_text(e: BaseException) -> str:
    """The readable part of a Ray error raised for a cell: its CellError, or that it died."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, CellError):
        return str(cause)
    import ray.exceptions as rex
    if isinstance(e, rex.RayActorError):
        return "the actor died (its process exited or was killed)"
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _is_channel_failure(text: str) -> bool:
    """A failure that a neighbour's death causes (not a root cause)."""
    return any(k in text for k in ("PeerDied", "ChannelClosed", "ChannelTimeout", "aborted by the driver"))


def _quiet(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - teardown is best effort
        pass
