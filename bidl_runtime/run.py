"""``python -m bidl_runtime.run --grid 3x2``: stream samples through the spatio-temporal grid.

With no other argument: an embedded local Ray, the default config (SeqClif3Fc3DmItout on the
generated DVS data) with its shipped weights, artifacts compiled or reused, N samples streamed
with a progress bar, a summary table, and whether the grid's outputs equal the single-device
reference run of the same artifacts.

The stage chain: config -> layout -> ModelSpec (all checked before Ray starts) -> artifacts
(compiled or reused, in a thread while Ray starts and the cells' processes start) -> place ->
Grid.start (cells load their programs) -> Grid.run -> RunReport. ``--keep-alive`` leaves the cells
up and prints how another process attaches (``--attach``).

Failures: a cell that dies, raises, freezes or gets stuck is restarted and its in-flight samples
replayed (``--max-restarts`` per cell); ``--journal FILE`` lets a rerun after a driver crash skip what
is done. Every error is one line naming the file, key, cell or flag (``--debug``: the traceback);
SIGTERM stops like Ctrl-C; nothing is left behind (Ray processes, /dev/shm files).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from .channels.shm import sweep_stale
from .startup import process_start_time

_T0 = process_start_time()

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bidl_runtime.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=None, help="RxC: rows = time slices, columns = model segments "
                    "(default: the config's lynxi_devices, else 1x1)")
    ap.add_argument("--config", default=None, help="config name or path (default: %(default)s -> the shipped "
                    "generated-DVS config)")
    ap.add_argument("--checkpoint", default=None, help="weights (default: bidl_models/weights/<config>.pth if shipped, "
                    "else seeded initial weights)")
    ap.add_argument("--samples", type=int, default=64, help="samples to stream (default %(default)s)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "emulated", "cuda", "compiled"],
                    help="cuda: GPU cells; compiled: the cuda backend's code path on CPU (Inductor-compiled chunks)")
    ap.add_argument("--transport", default="auto", choices=["auto", "shm", "tcp", "cuda"],
                    help="auto: shared memory within a node, tcp across nodes; with --backend cuda, GPU -> GPU "
                    "(CUDA IPC) between the cells of a node")
    ap.add_argument("--gpus-per-cell", type=float, default=1.0, help="cuda: each cell's share of a GPU (0.25: "
                    "four cells per GPU; default %(default)s)")
    ap.add_argument("--chunk-compile", default="graphs", choices=["graphs", "inductor", "aoti", "capture", "eager"],
                    help="cuda/compiled: how each cell compiles its chunk function (default %(default)s: Inductor "
                    "+ CUDA graphs; cached on disk beside the artifact)")
    ap.add_argument("--amp", default=None, choices=["bf16", "fp16"],
                    help="cuda/compiled: run each chunk under autocast in this precision (default fp32)")
    ap.add_argument("--replicas", type=int, default=1, help="independent copies of the grid, fed round-robin")
    ap.add_argument("--address", default=None, help="join the Ray cluster at HOST:PORT instead of starting a "
                    "private one; auto: the one RAY_ADDRESS names, else the last `ray start` here (without "
                    "--address, RAY_ADDRESS is ignored)")
    ap.add_argument("--namespace", default=None, help="Ray namespace (default: a new one; --attach needs the "
                    "kept-alive grid's)")
    ap.add_argument("--keep-alive", action="store_true", help="keep the cells up afterwards (dashboard; other "
                    "processes attach with --attach)")
    ap.add_argument("--attach", action="store_true", help="run the samples through the kept-alive grid at "
                    "--address in --namespace (no start-up)")
    ap.add_argument("--verify", dest="verify", action="store_true", default=None,
                    help="compare every output with the single-device reference (default on for cpu)")
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--batch", type=int, default=1, help="samples per message, end to end (artifacts compiled "
                    "for this batch; results still per sample, in order; default %(default)s, the chip's)")
    ap.add_argument("--depth", type=int, default=2, help="channel slots per edge")
    ap.add_argument("--max-inflight", type=int, default=None, help="samples in the grid at once")
    ap.add_argument("--threads-per-cell", type=int, default=None)
    ap.add_argument("--artifacts", default="artifacts", help="artifact cache directory")
    ap.add_argument("--force-compile", action="store_true", help="rebuild artifacts even if cached")
    ap.add_argument("--profile-fps", type=float, default=28.8,
                    help="emulated device speed: frames/s on ResNetLif50 2x128x128 (default: the guide's chip)")
    ap.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="write the report as JSON here")
    ap.add_argument("--trace", default=None, metavar="FILE", help="write a Chrome/Perfetto trace of the run here "
                    "(one track per cell: waits, compute, sends; the driver's feed and results) and a PNG "
                    "timeline of the first samples beside it (FILE with .png)")
    ap.add_argument("--seed", type=int, default=0, help="seed of synthetic samples when the config has no data")
    ap.add_argument("--max-restarts", type=int, default=3, metavar="N",
                    help="restart a failed cell (and replay its replica's in-flight samples) up to N times; "
                         "past that the run stops naming it (default %(default)s)")
    ap.add_argument("--journal", default=None, metavar="FILE",
                    help="record finished samples here; a rerun with the same file skips them")
    ap.add_argument("--inject-fault", default=None, metavar="ROW,COL:KIND:SAMPLE",
                    help="fault drill: cell (ROW, COL) of replica 0 does KIND at SAMPLE, KIND one of "
                         "raise, exit, hang (SIGSTOP), stall (stuck in compute), connect (fails to wire)")
    ap.add_argument("--debug", action="store_true", help="print tracebacks instead of one-line errors")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    stop_on_sigterm()
    try:
        return _attach(args) if args.attach else _main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error is one line (--debug: the traceback)
        if args.debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, USAGE_ERRORS) else 1


USAGE_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError)


def one_line(e: BaseException) -> str:
    """An error as one line: its message with whitespace folded (our errors name the file, key, cell
    or flag); other exception types keep their name and point at ``--debug``."""
    from .grid import RunError
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, (RunError, *USAGE_ERRORS)) or type(e).__module__.split(".")[0] in ("bidl_runtime", "compile",
                                                                                       "bidl_models"):
        return text
    return f"{type(e).__name__}: {text} (--debug shows the traceback)"


def stop_on_sigterm() -> None:
    """SIGTERM stops the run as Ctrl-C does (cells, Ray and channel files cleaned up); call it again
    after ``ray.init``, which installs its own handler."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:   # not the main thread
        pass


def check_flags(args: argparse.Namespace) -> None:
    """Flags that can be checked before anything starts; ValueError naming the flag."""
    import math
    for flag, v, ok in (("--samples", args.samples, args.samples >= 1), ("--depth", args.depth, args.depth >= 1),
                        ("--replicas", args.replicas, args.replicas >= 1),
                        ("--batch", args.batch, args.batch >= 1),
                        ("--max-restarts", args.max_restarts, args.max_restarts >= 0),
                        ("--max-inflight", args.max_inflight, args.max_inflight is None or args.max_inflight >= 1),
                        ("--threads-per-cell", args.threads_per_cell,
                         args.threads_per_cell is None or args.threads_per_cell >= 1)):
        if not ok:
            least = 0 if flag == "--max-restarts" else 1
            raise ValueError(f"{flag} {v}: expected an int >= {least}")
    if not (math.isfinite(args.profile_fps) and args.profile_fps > 0):
        raise ValueError(f"--profile-fps {args.profile_fps:g}: expected a finite number of frames/s > 0")
    from .devices import backend_problem
    why = backend_problem(args.backend)
    if why:
        raise ValueError(f"--backend {args.backend}: {why}")


def _main(args: argparse.Namespace) -> int:
    from bidl_models.config import load_config
    from bidl_models.model_spec import ModelSpec

    from .config import COMPILE_START_TIMEOUT_S, COMPILED_BACKENDS, RuntimeConfig
    from .defaults import default_checkpoint, default_config, default_threads
    from .devices import DeviceProfile
    from .layout import GridLayout, time_slices
    from .startup import StartupClock

    # 1. everything that can be checked without a cluster fails fast, with a clear message
    t_main = time.time()
    check_flags(args)
    cfg = load_config(args.config or default_config(), args.cfg_options)
    layout = GridLayout.resolve(cfg, args.grid, args.replicas)
    checkpoint = args.checkpoint or default_checkpoint(cfg.name)
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
    faults = parse_fault(args.inject_fault) if args.inject_fault else {}
    for (_, row, col) in faults:
        if not (row < layout.rows and col < layout.cols):
            raise ValueError(f"--inject-fault {args.inject_fault!r}: the grid is {layout.rows}x{layout.cols}, "
                             f"it has no cell ({row}, {col})")
    threads = args.threads_per_cell or default_threads(layout.n_cells)
    rcfg = RuntimeConfig(backend=args.backend, transport=args.transport, depth=args.depth, batch=args.batch,
                         max_inflight=args.max_inflight, threads_per_cell=threads,
                         gpus_per_cell=args.gpus_per_cell, chunk_compile=args.chunk_compile, amp=args.amp,
                         **({"start_timeout_s": COMPILE_START_TIMEOUT_S} if args.backend in COMPILED_BACKENDS
                            else {}),
                         profile=DeviceProfile(ref_fps=args.profile_fps), faults=faults,
                         max_restarts=args.max_restarts)
    clock = StartupClock(show=True, t0=_T0, steps=7 + layout.n_cells)
    journal = None
    try:
        clock.mark("imports", _T0, t_main)
        with clock.phase("model", "resolving the model"):
            spec = ModelSpec.from_config(cfg, columns=layout.cols, checkpoint=checkpoint)
            slices = time_slices(spec.T, layout.rows)
            spec.check_slices(slices)
        if args.journal:
            from .journal import Journal
            journal = Journal.open(args.journal, journal_identity(cfg, spec, args))
    except BaseException:
        clock.close()   # the error line comes next, on a line of its own
        raise
    verify = args.verify if args.verify is not None else args.backend == "cpu"
    if verify and args.backend == "emulated":
        _say("note: --verify needs real compute; the emulated backend moves zeros, so it is skipped")
        verify = False
    _say(f"weights: {checkpoint}" if checkpoint else
         "weights: NONE SHIPPED for this config -> deterministic SEEDED INITIAL WEIGHTS (seed 0), not a trained model")
    if journal is not None and journal.done:
        _say(f"journal: {len(journal.done)} sample(s) already done in {args.journal}: skipped")
    swept = sweep_stale()
    if swept:
        _say(f"removed {len(swept)} channel file(s) left in /dev/shm by dead runs")

    # 2. artifacts in a thread while Ray starts (or is joined) and the cells' processes start
    import ray

    from .api import build_artifacts
    from .cluster import join, session_dir, start_local, token_source
    from .grid import Grid
    from .place import Cluster, place
    from .pool import kill, spawn

    def artifacts():
        with clock.phase("artifacts", "checking the compiled artifacts"):
            return build_artifacts(spec, slices, rcfg, args.artifacts, args.force_compile, verbose=False,
                                   progress=True)

    namespace = args.namespace or f"bidl-{uuid.uuid4().hex[:8]}"
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bidl-artifacts")
    arts_future = pool.submit(artifacts)
    started = not args.address
    grid = actors = None
    try:
        with clock.phase("ray_start", "starting Ray" if started else f"joining {args.address}"):
            if args.address:
                info = join(args.address, namespace=namespace, log_to_driver=False, logging_level="WARNING")
            else:
                info = start_local(num_cpus=os.cpu_count(), resources={"bidl_device": layout.max_device + 1},
                                   include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                                   logging_level="WARNING", namespace=namespace)
        stop_on_sigterm()   # ray.init installed its own
        cluster = Cluster.connect()
        actors = (spawn(layout, cluster.device_nodes, rcfg.actor_gpus())
                  if layout.max_device < len(cluster.device_nodes) else None)
        url = info.dashboard_url
        url = f"http://{url}" if url and not url.startswith("http") else url
        where = (f"joined {args.address}" if args.address else
                 f"embedded private cluster on 127.0.0.1 (session {session_dir()})")
        _say(f"ray: {where}, token auth (token: {token_source()}), namespace {namespace}; "
             f"dashboard {url or 'not available'}")
        arts = arts_future.result()
        with clock.phase("place", "placing the cells"):
            plan = place(arts, cluster, layout, transport=rcfg.transport, backend=rcfg.backend)
        records = getattr(arts, "records", [])
        built = [r for r in records if r.cache == "miss"]
        if built:
            _say(f"compiled {len(built)} artifact(s) into {built[0].path.parents[2]}:\n{arts.table()}")
        elif records:
            _say(arts.summary_line())
        _say(plan.table())
        grid = Grid(plan, rcfg, actors=actors, clock=clock)
        grid.start()
        samples, source = _samples(args, cfg, plan, spec.input_high)
        _say(f"data: {source}")
        report = grid.run(samples, total=args.samples, progress=True, verify=verify, journal=journal,
                          trace=args.trace)
        clock.close()
        print()
        print(report.summary())
        print(startup_line(report.startup))
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
            print(f"report written to {args.json}")
        ok = report.verify is None or report.verify["equal"] == report.verify["compared"]
        if args.keep_alive:
            _keep_alive(grid, url)
        return 0 if ok else 1
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: say how far it got, then clean up below
        clock.close()
        s = grid.stream if grid is not None else None
        if s is None:
            raise
        kept = (f"; {len(s.outputs)} recorded in {args.journal}: a rerun with --journal {args.journal} skips them"
                if journal is not None else "; --journal FILE would let a rerun skip them")
        print(f"\ninterrupted after {s.collected} sample(s) done, {s.inflight} in flight, "
              f"{len(s.rejected)} rejected{kept}", file=sys.stderr)
        return 130
    finally:
        clock.close()
        pool.shutdown(wait=True, cancel_futures=True)
        if journal is not None:
            journal.close()
        if grid is not None:
            grid.close()
        elif actors:
            for a in actors.values():
                kill(a)
        if started and ray.is_initialized():
            ray.shutdown()
        sweep_stale()


def journal_identity(cfg, spec, args: argparse.Namespace) -> dict:
    """What a journal's outputs depend on: the model (config, weights, cut), the backend and the data."""
    data = cfg.get("data")
    test = data.get("test") if hasattr(data, "get") else None
    return {"config": cfg.name, "model": spec.key, "T": spec.T, "backend": args.backend,
            "data": repr(dict(test)) if test else f"synthetic seed {args.seed}"}


def _say(text: str) -> None:
    """A line on stdout that does not break the start-up progress bar (on stderr)."""
    from tqdm import tqdm
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def _keep_alive(grid, url: Optional[str]) -> None:
    """Leave the cells up beside the ``bidl-grid`` host actor until Ctrl-C."""
    import ray

    from .keepalive import host
    from .cluster import token_env
    lease = host(grid)   # the handle keeps the host actor alive (Ray ends an actor with its last handle)
    ctx = ray.get_runtime_context()
    address = ctx.gcs_address     # the embedded cluster's is 127.0.0.1:<port> (loopback only)
    token = token_env()           # an attaching process needs the cluster's token (token auth stays on)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)   # kill PID stops it as cleanly as Ctrl-C (cells, Ray, shm)
    print(f"\nkeeping the grid alive: {len(grid.plan.cells)} cells loaded and idle (dashboard {url}); "
          f"Ctrl-C or kill -TERM {os.getpid()} stops it")
    print(f"join with: {token + ' ' if token else ''}python -m bidl_runtime.run --attach --address {address} "
          f"--namespace {ctx.namespace}")
    print(f"     or in Python{' (with ' + token + ')' if token else ''}: "
          f"bidl_runtime.keepalive.attach({ctx.namespace!r}, address={address!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the kept-alive grid", flush=True)
    del lease


def _attach(args: argparse.Namespace) -> int:
    """``--attach``: run samples through a kept-alive grid."""
    if not args.address or not args.namespace:
        print("error: --attach needs --address and --namespace (printed by the --keep-alive run)", file=sys.stderr)
        return 2
    import ray

    from bidl_models.config import load_config

    from .keepalive import attach
    grid = None
    try:
        grid = attach(args.namespace, args.address)
        stop_on_sigterm()   # ray.init installed its own
        try:
            cfg = load_config(args.config or grid.plan.config, args.cfg_options)   # for its test data
        except (ValueError, FileNotFoundError):
            cfg = None
        samples, source = _samples(args, cfg, grid.plan)
        verify = args.verify if args.verify is not None else grid.config.backend == "cpu"
        print(f"attached to the kept-alive grid {grid.plan.rows}x{grid.plan.cols} of {grid.plan.config}; data: {source}")
        report = grid.run(samples, total=args.samples, progress=True, verify=verify, trace=args.trace)
        print(report.summary())
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
        ok = report.verify is None or report.verify["equal"] == report.verify["compared"]
        return 0 if ok else 1
    finally:
        if grid is not None:
            grid.close()
        if ray.is_initialized():
            ray.shutdown()


def startup_line(s: dict) -> str:
    """One line of the start-up breakdown."""
    parts = [f"{k[:-2].replace('_', ' ')} {s[k]:.1f} s" for k in
             ("imports_s", "model_s", "ray_start_s", "artifacts_s", "place_s", "cells_s", "wire_s") if k in s]
    cells = s.get("cells", {})
    per = (f"; per cell (max): imports {cells['imports_s']['max']:.1f} s, program load {cells['load_s']['max']:.2f} s; "
           f"CPU: cells {s['cells_cpu_sum_s']:.1f} s, driver {s['driver_cpu_s']:.1f} s"
           if "imports_s" in cells and "cells_cpu_sum_s" in s and "driver_cpu_s" in s else "")
    return f"start-up {s.get('total_s', 0):.1f} s from the command's start: " + ", ".join(parts) + per


def _samples(args, cfg, plan, high: Optional[int] = None):
    """The config's test samples, else seeded synthetic ones of the plan's input (event frames, or
    token ids below ``high``, the model's vocabulary size: from the config when not given)."""
    import torch
    from bidl_models.specs import torch_dtype

    from .data import dataset_samples, synthetic_samples
    x = plan.outputs(None)[0].layout[0]
    dtype = torch_dtype(x.dtype)
    gen = dataset_samples(cfg, args.samples, dtype) if cfg is not None else None
    if gen is not None:
        return gen, f"{cfg.data.test.type} test split ({args.samples} samples)"
    shape = tuple(x.shape[2:])
    tokens = not dtype.is_floating_point and dtype != torch.uint8
    if tokens and high is None and cfg is not None:
        from bidl_models.config import load_model
        high = load_model(cfg).input_high
    what = f"token ids in [0, {high})" if tokens else "event frames"
    return (synthetic_samples(plan.T, shape, args.samples, args.seed, dtype=dtype, high=high),
            f"synthetic seeded {what} {'x'.join(map(str, (plan.T,) + shape))} (the config's data is not available)")


def parse_fault(text: str) -> dict:
    """``'1,0:exit:2'`` -> ``{(0, 1, 0): ('exit', 2)}`` (kinds: :data:`bidl_runtime.cell.FAULTS`)."""
    from .cell import FAULTS
    try:
        cell, kind, sample = text.split(":")
        row, col = (int(v) for v in cell.split(","))
        if kind not in FAULTS:
            raise ValueError
        return {(0, row, col): (kind, int(sample))}
    except ValueError:
        raise ValueError(f"--inject-fault {text!r}: expected ROW,COL:KIND:SAMPLE with KIND one of {list(FAULTS)}, "
                         "e.g. 1,0:exit:2") from None


if __name__ == "__main__":
    sys.exit(main())
