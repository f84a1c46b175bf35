"""``python -m bidl_runtime.run --grid 3x2``: stream samples through the spatio-temporal grid.

With no other argument: an embedded local Ray, the default config (SeqClif3Fc3DmItout on the
generated DVS data) with its shipped weights, artifacts compiled or reused, N samples streamed
with a progress bar, a summary table, and whether the grid's outputs equal the single-device
reference run of the same artifacts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bidl_runtime.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", default=None, help="RxC: rows = time slices, columns = model segments "
                    "(default: the config's lynxi_devices, else 1x1)")
    ap.add_argument("--config", default=None, help="config name or path (default: %(default)s -> the shipped "
                    "generated-DVS config)")
    ap.add_argument("--checkpoint", default=None, help="weights (default: weights/<config>.pth if shipped, "
                    "else seeded initial weights)")
    ap.add_argument("--samples", type=int, default=64, help="samples to stream (default %(default)s)")
    ap.add_argument("--backend", default="cpu", choices=["cpu", "emulated", "cuda"])
    ap.add_argument("--transport", default="auto", choices=["auto", "shm", "tcp"],
                    help="auto: shared memory within a node, tcp across nodes")
    ap.add_argument("--replicas", type=int, default=1, help="independent copies of the grid, fed round-robin")
    ap.add_argument("--address", default=None, help="join this Ray cluster instead of starting one")
    ap.add_argument("--keep-alive", action="store_true", help="keep the cluster up afterwards (dashboard)")
    ap.add_argument("--verify", dest="verify", action="store_true", default=None,
                    help="compare every output with the single-device reference (default on for cpu)")
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--depth", type=int, default=2, help="channel slots per edge")
    ap.add_argument("--max-inflight", type=int, default=None, help="samples in the grid at once")
    ap.add_argument("--threads-per-cell", type=int, default=None)
    ap.add_argument("--artifacts", default="artifacts", help="artifact cache directory")
    ap.add_argument("--force-compile", action="store_true", help="rebuild artifacts even if cached")
    ap.add_argument("--profile-fps", type=float, default=28.8,
                    help="emulated device speed: frames/s on ResNetLif50 2x128x128 (default: the guide's chip)")
    ap.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="write the report as JSON here")
    ap.add_argument("--seed", type=int, default=0, help="seed of synthetic samples when the config has no data")
    ap.add_argument("--inject-fault", default=None, metavar="ROW,COL:raise|exit:SAMPLE",
                    help="fault drill: make cell (ROW, COL) of replica 0 raise or exit at SAMPLE")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _main(args: argparse.Namespace) -> int:
    from bidl_models.config import load_config

    from .defaults import default_checkpoint, default_config
    from .devices import DeviceProfile
    from .api import prepare, stream
    from .driver import RunError, RuntimeConfig, node_devices
    from .plan import make_plan, parse_grid
    from .session import default_threads

    # 1. everything that can be checked without a cluster fails fast, with a clear message
    try:
        cfg = load_config(args.config or default_config(), args.cfg_options)
        grid = parse_grid(args.grid) if args.grid else None
        if args.samples < 1:
            raise ValueError(f"--samples {args.samples}: expected >= 1")
        plan = make_plan(cfg, grid, args.replicas)
        checkpoint = args.checkpoint or default_checkpoint(cfg.name)
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint!r}: no such file")
        faults = parse_fault(args.inject_fault) if args.inject_fault else {}
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verify = args.verify if args.verify is not None else args.backend == "cpu"
    if verify and args.backend == "emulated":
        print("note: --verify needs real compute; the emulated backend moves zeros, so it is skipped")
        verify = False
    print(f"weights: {checkpoint}" if checkpoint else
          "weights: NONE SHIPPED for this config -> deterministic SEEDED INITIAL WEIGHTS (seed 0), not a trained model")

    # 2. Ray: join or start an embedded local cluster
    import ray

    from .cluster import join, start_local, token_source
    started = False
    if args.address:
        info = join(args.address, namespace=f"bidl-{uuid.uuid4().hex[:8]}", log_to_driver=False,
                    logging_level="WARNING")
    else:
        info = start_local(num_cpus=os.cpu_count(), resources={"bidl_device": max(c.device for c in plan.cells) + 1},
                           include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                           logging_level="WARNING", namespace=f"bidl-{uuid.uuid4().hex[:8]}")
        started = True
    try:
        url = info.dashboard_url
        url = f"http://{url}" if url and not url.startswith("http") else url
        where = f"joined {args.address}" if args.address else "embedded local cluster on 127.0.0.1"
        print(f"ray: {where}, token auth (token: {token_source()}); dashboard {url or 'not available'}")
        try:
            plan = make_plan(cfg, grid, args.replicas, device_nodes=node_devices())
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(plan.table())
        threads = args.threads_per_cell or default_threads(len(plan.cells))
        rcfg = RuntimeConfig(backend=args.backend, transport=args.transport, depth=args.depth,
                             max_inflight=args.max_inflight, threads_per_cell=threads,
                             profile=DeviceProfile(ref_fps=args.profile_fps), faults=faults)
        prepared = prepare(cfg, plan, rcfg, checkpoint, args.artifacts, args.force_compile)
        x0 = prepared[0][(0, plan.slices[0])].x
        samples, source = _samples(args, cfg, plan.T, tuple(x0.shape[2:]))
        print(f"data: {source}")
        report = stream(cfg, samples, rcfg=rcfg, verify=verify, total=args.samples, progress=True,
                        plan=plan, prepared=prepared)
        print()
        print(report.summary())
        if args.json:
            Path(args.json).write_text(json.dumps(report_json(report), indent=2))
            print(f"report written to {args.json}")
        ok = report.verify is None or report.verify["equal"] == report.verify["compared"]
        if args.keep_alive:
            print(f"keeping the cluster up: dashboard {url}; Ctrl-C to stop")
            while True:
                time.sleep(3600)
        return 0 if ok else 1
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()


def _samples(args, cfg, T, shape):
    from .session import dataset_samples, synthetic_samples
    gen = dataset_samples(cfg, args.samples)
    if gen is not None:
        return gen, f"{cfg.data.test.type} test split ({args.samples} samples)"
    return (synthetic_samples(T, shape, args.samples, args.seed),
            f"synthetic seeded event frames {T}x{'x'.join(map(str, shape))} (the config's data is not available)")


def parse_fault(text: str) -> dict:
    """``'1,0:exit:2'`` -> ``{(0, 1, 0): ('exit', 2)}``."""
    try:
        cell, kind, sample = text.split(":")
        row, col = (int(v) for v in cell.split(","))
        if kind not in ("raise", "exit"):
            raise ValueError
        return {(0, row, col): (kind, int(sample))}
    except ValueError:
        raise ValueError(f"--inject-fault {text!r}: expected ROW,COL:raise|exit:SAMPLE, e.g. 1,0:exit:2") from None


def report_json(report) -> dict:
    p = report.plan
    return {
        "config": p.config, "grid": [p.rows, p.cols], "replicas": p.replicas, "T": p.T,
        "slices": list(p.slices), "splits": [list(s) for s in p.splits], "backend": report.backend,
        "transport": report.transport, "samples": report.samples, "rejected": report.rejected,
        "wall_s": report.wall_s, "frames_per_s": report.frames_per_s, "samples_per_s": report.samples_per_s,
        "latency_ms_p50": report.latency_ms(0.5), "latency_ms_p99": report.latency_ms(0.99),
        "accuracy": report.accuracy, "verify": report.verify, "cells": report.cells,
    }


if __name__ == "__main__":
    sys.exit(main())
