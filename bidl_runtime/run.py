"""``bidl-run`` (``python -m bidl_runtime.run --grid 3x2``): stream samples through the spatio-temporal grid.

With no other argument: an embedded local Ray, the shipped default config (SeqClif3Fc3DmItout on the
generated DVS data) with its shipped weights, artifacts compiled or reused, N samples streamed with a
progress bar, a summary table, and whether the grid's outputs equal the single-device reference run
of the same artifacts.

The stage chain is :class:`bidl_runtime.api.GridJob`'s: config -> layout -> model spec (all checked
before Ray starts) -> artifacts (compiled or reused, in a thread while Ray starts and the cells'
processes start) -> plan -> grid (cells load their programs) -> run -> report (the flow is in
:mod:`bidl_runtime.launch`). ``--keep-alive`` leaves the cells up and prints how another process
attaches (``--attach``).

Failures: a cell that dies, raises, freezes or gets stuck is restarted and its in-flight samples
replayed (``--max-restarts`` per cell); ``--journal FILE`` lets a rerun after a driver crash skip what
is done. Every error is one line naming the file, key, cell or flag (``--debug``: the traceback);
SIGTERM stops like Ctrl-C at any phase (exit 130, one line saying how far it got); nothing is left behind
(Ray processes, /dev/shm files). What dead runs left (a driver killed with SIGKILL: Ray's agents, its
token directory) is removed at the start (``--cleanup``: only that). Sizes are checked before anything
is allocated, and a grid starts only if its cells fit the memory available (``--no-memory-check``).

Config files are Python and run when loaded, as in BIDL and mmcv: load only files you trust. The file
loaded is printed first; with no ``--config`` it is the shipped default, never a file of the current
directory.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Optional, Sequence


def _early_stop(signum: int, frame: object) -> None:   # SIGTERM before the command's wrapper is in place:
    print("interrupted", file=sys.stderr, flush=True)  # nothing has started yet
    os._exit(130)


if __name__ == "__main__":   # python -m bidl_runtime.run: from its first line (an import sets no handler)
    signal.signal(signal.SIGTERM, _early_stop)

from bidl_grid.command import run_command  # noqa: E402 - after the early SIGTERM handler
from bidl_models.config import CONFIG_IS_CODE, add_config_arguments  # noqa: E402
from bidl_models.slicing import check_size, parse_grid  # noqa: E402
from bidl_runtime.cell.template import CellTemplate  # noqa: E402
from bidl_runtime.cluster.cleanup import cleanup  # noqa: E402
from bidl_runtime.processes import process_start_time  # noqa: E402
from bidl_runtime.runtime_config import (AMP, BACKENDS, CHUNK_COMPILE_METHODS, RUN_BACKEND,  # noqa: E402
                                         TRANSPORTS, DeviceProfile, RuntimeConfig, check_int)
from compile.cache_dir import DEFAULT_HELP as ARTIFACTS_HELP, default_artifacts  # noqa: E402

T0 = process_start_time()      # the start-up clock counts from the command's start

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
_DEFAULTS = RuntimeConfig()


def add_grid_flags(ap: argparse.ArgumentParser) -> None:
    """The flags that choose a model and a grid: ``bidl-run`` and ``bidl-plan`` take the same ones."""
    add_config_arguments(ap, required=False)   # --config (default: the shipped default), --config-root, --cfg-options
    ap.add_argument("--grid", default=None, help="RxC: rows = time slices, columns = model segments (default: "
                    "the config's lynxi_devices, else 1 x the config's segments)")
    ap.add_argument("--replicas", type=int, default=1, help="independent copies of the grid, fed round-robin "
                    "(default %(default)s)")
    ap.add_argument("--backend", default=None, choices=BACKENDS,
                    help="compiled: each chunk an AOTInductor-compiled program on this machine's cores (the "
                    "cuda backend's code path); cpu: the artifacts' TorchScript form, no compiler needed; "
                    f"emulated: no compute, real shapes paced like the guide's chip; cuda: GPU cells (default "
                    f"{RUN_BACKEND}, else cpu where no C++ compiler is found)")
    ap.add_argument("--transport", default=_DEFAULTS.transport, choices=TRANSPORTS,
                    help="auto: shared memory within a node, tcp across nodes; with --backend cuda, GPU -> GPU "
                    "(CUDA IPC) between the cells of a node (default %(default)s)")
    ap.add_argument("--batch", type=int, default=_DEFAULTS.batch, help="samples per message, end to end "
                    "(artifacts compiled for this batch; default %(default)s, the chip's)")
    ap.add_argument("--hosts", default=None, metavar="HOST=N[,HOST=N...]",
                    help="devices per host (each host named by its Ray node's address): cells are placed so that "
                    "the fewest bytes per sample cross hosts (default: the config's lynxi_hosts, else the "
                    "cluster's nodes in order)")
    ap.add_argument("--standby", default=None, metavar="HOST=N[,HOST=N...]",
                    help="standby devices per host: idle until a host is lost, then they take its cells first "
                    "(default: the config's lynxi_standby)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bidl-run", description=__doc__.split("\n\n")[0],
                                 epilog=f"Configs are code: {CONFIG_IS_CODE}.")
    add_grid_flags(ap)
    ap.add_argument("--checkpoint", default=None, help="weights (default: the config's shipped weights, "
                    "bidl_models/weights/<config>.pth, else seeded initial weights)")
    ap.add_argument("--samples", type=int, default=64, help="samples to stream (default %(default)s)")
    ap.add_argument("--synthetic", action="store_true", help="stream seeded synthetic samples of the model's input "
                    "even when the config's data is there (without it they are used only when the data is missing)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples (default %(default)s)")
    ap.add_argument("--verify", dest="verify", action="store_true", default=None,
                    help="compare every output with the single-device run of the same programs, in processes "
                    "of its own that start once the grid has streamed (default: on for the compiled and cpu "
                    "backends)")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="do not run the single-device reference (outputs are not checked)")
    ap.add_argument("--verify-beside", action="store_true",
                    help="the reference computes beside the streaming grid at idle priority (sooner done, but "
                    "on shared cores it slows the grid) instead of after it")
    ap.add_argument("--artifacts", default=default_artifacts(), help=f"artifact cache directory ({ARTIFACTS_HELP})")
    ap.add_argument("--force-compile", action="store_true", help="rebuild artifacts even if cached")
    ap.add_argument("--address", default=None, help="join the Ray cluster at HOST:PORT instead of starting a "
                    "private one; auto: the one RAY_ADDRESS names, else the last `ray start` here (without "
                    "--address, RAY_ADDRESS is ignored)")
    ap.add_argument("--tls", action="store_true", help="encrypt what crosses hosts: Ray's TLS for this driver "
                    "(the cluster's nodes run with RAY_USE_TLS=1) and TLS on the tcp channels, with the files "
                    "RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY and RAY_TLS_CA_CERT name on every host (needs --address)")
    ap.add_argument("--namespace", default=None, help="Ray namespace (default: a new one; --attach needs the "
                    "kept-alive grid's)")
    ap.add_argument("--keep-alive", action="store_true", help="keep the cells up afterwards (dashboard; other "
                    "processes attach with --attach)")
    ap.add_argument("--dashboard", action="store_true", help="start Ray's dashboard (default: with --keep-alive "
                    "only; it adds seconds of CPU to the start-up)")
    ap.add_argument("--attach", action="store_true", help="run the samples through the kept-alive grid at "
                    "--address in --namespace (no start-up)")
    ap.add_argument("--depth", type=int, default=_DEFAULTS.depth, help="channel slots per edge (default %(default)s)")
    ap.add_argument("--max-inflight", type=int, default=None, help="samples in the grid at once (default: 2 x "
                    "rows x replicas)")
    ap.add_argument("--threads-per-cell", type=int, default=None, help="intra-op threads of each cell (default: "
                    "this machine's cores / cells for the cpu and compiled backends, else 1)")
    ap.add_argument("--gpus-per-cell", type=float, default=_DEFAULTS.gpus_per_cell, help="cuda: each cell's share "
                    "of a GPU (0.25: four cells per GPU; default %(default)s)")
    ap.add_argument("--chunk-compile", default=_DEFAULTS.chunk_compile, choices=CHUNK_COMPILE_METHODS,
                    help="cuda/compiled: how each cell compiles its chunk function (default %(default)s: Inductor "
                    "+ CUDA graphs on a GPU, an AOTInductor package on CPU; cached on disk beside the artifact)")
    ap.add_argument("--amp", default=None, choices=[a for a in AMP if a],
                    help="cuda/compiled: run each chunk under autocast in this precision (default fp32)")
    ap.add_argument("--profile-fps", type=float, default=DeviceProfile().ref_fps,
                    help="emulated device speed: frames/s on ResNetLif50 2x128x128 (default: the guide's chip, "
                    "%(default)s)")
    ap.add_argument("--json", default=None, help="write the report as JSON here")
    ap.add_argument("--trace", default=None, metavar="FILE", help="write a Chrome/Perfetto trace of the run here "
                    "(one track per cell: waits, compute, sends; the driver's feed and results) and a PNG "
                    "timeline of the first samples beside it (FILE with .png)")
    ap.add_argument("--max-restarts", type=int, default=_DEFAULTS.max_restarts, metavar="N",
                    help="restart a failed cell (and replay its replica's in-flight samples) up to N times; "
                         "past that the run stops naming it (default %(default)s)")
    ap.add_argument("--journal", default=None, metavar="FILE",
                    help="record finished samples here; a rerun with the same file skips them")
    ap.add_argument("--inject-fault", default=None, metavar="ROW,COL:KIND:SAMPLE",
                    help="fault drill: cell (ROW, COL) of replica 0 does KIND at SAMPLE, KIND one of "
                         "raise, exit, hang (SIGSTOP), stall (stuck in compute), connect (fails to wire)")
    ap.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                    help="start the grid even if its cells' memory (estimated per cell, as bidl-plan shows) "
                         "exceeds what the nodes have available")
    ap.add_argument("--cleanup", action="store_true", help="only remove what dead runs of this user left: "
                    "orphaned Ray processes (agents of a killed driver's cluster) and stale token directories "
                    "(every run does this at its start)")
    ap.add_argument("--debug", action="store_true", help="print tracebacks instead of one-line errors")
    return ap


def check_sizes(args: argparse.Namespace) -> None:
    """Every size flag, checked before anything is imported or allocated (one line naming the flag)."""
    for name in ("samples", "seed", "depth", "batch", "max_inflight", "threads_per_cell", "max_restarts"):
        if hasattr(args, name):
            check_int(name, getattr(args, name))
    rows, cols = parse_grid(args.grid) if args.grid is not None else (1, 1)
    check_size(rows, cols, args.replicas)


def _run(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    if args.cleanup:
        print(cleanup().line())
        return 0
    check_sizes(args)
    # cells' (and the reference's) processes fork from a template that has torch and the cell code: forked
    # once this process has them, before it starts a thread or imports Ray (see bidl_runtime.cell.template)
    template = None if args.attach or args.address else CellTemplate.for_cells()
    from bidl_runtime.launch import attach, launch   # torch and Ray load only when a run starts (--help: fast)
    return attach(args) if args.attach else launch(args, T0, template)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``bidl-run``'s exit code: 0 done and verified, 1 a failed run or verification, 2 a bad flag,
    config or file, 130 Ctrl-C / SIGTERM."""
    return run_command(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
