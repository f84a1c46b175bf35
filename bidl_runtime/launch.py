"""What ``bidl-run`` does once its flags are parsed: the :class:`~bidl_runtime.api.GridJob` chain with
Ray's start overlapped, the progress and summary a user sees, and a clean exit on every path.

    config -> layout -> spec (checked before Ray starts) -> artifacts (in a thread) || Ray start, cell
    processes spawned -> plan (shipped) -> grid.start -> run -> report -> keep-alive or teardown
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from concurrent.futures import wait
from pathlib import Path
from typing import Any, Optional

import ray
from tqdm import tqdm

from bidl_grid.command import stop_on_sigterm
from bidl_models.checkpoint import shipped_weights
from bidl_models.config import load_config, load_model

from bidl_runtime.api import GridJob, default_config
from bidl_runtime.cell.cell import FAULTS
from bidl_runtime.cell.contexts import backend_problem
from bidl_runtime.cell.pool import kill, spawn
from bidl_runtime.channels import sweep_stale
from bidl_runtime.cluster.nodes import device_map
from bidl_runtime.cluster.ray_cluster import join, session_dir, start_local, token_env, token_source, use_tls
from bidl_runtime.driver.journal import Journal
from bidl_runtime.driver.keepalive import attach as attach_grid
from bidl_runtime.driver.keepalive import host
from bidl_runtime.driver.samples import samples_for
from bidl_runtime.driver.startup import StartupClock
from bidl_runtime.plan.hosts import HostMap
from bidl_runtime.runtime_config import COMPILE_START_TIMEOUT_S, COMPILED_BACKENDS, DeviceProfile, RuntimeConfig


def runtime_config(args: argparse.Namespace, faults: dict) -> RuntimeConfig:
    """The run's tunables from its flags (checked by :class:`RuntimeConfig`, naming the flag)."""
    if args.samples < 1:
        raise ValueError(f"--samples {args.samples}: expected an int >= 1")
    why = backend_problem(args.backend)
    if why:
        raise ValueError(f"--backend {args.backend}: {why}")
    if getattr(args, "tls", False) and not args.address:
        raise ValueError("--tls encrypts what crosses hosts: it needs --address (the embedded cluster runs on "
                         "127.0.0.1 only)")
    return RuntimeConfig(backend=args.backend, transport=args.transport, depth=args.depth, batch=args.batch,
                         max_inflight=args.max_inflight, threads_per_cell=args.threads_per_cell,
                         gpus_per_cell=args.gpus_per_cell, chunk_compile=args.chunk_compile, amp=args.amp,
                         **({"start_timeout_s": COMPILE_START_TIMEOUT_S} if args.backend in COMPILED_BACKENDS
                            else {}),
                         profile=DeviceProfile(ref_fps=args.profile_fps), faults=faults,
                         max_restarts=args.max_restarts, tls=getattr(args, "tls", False))


def plan_job(args: argparse.Namespace, rcfg: Optional[RuntimeConfig] = None) -> GridJob:
    """The job the flags shared by ``bidl-run`` and ``bidl-plan`` describe (the same defaults)."""
    cfg = load_config(args.config or default_config(), args.cfg_options)
    rcfg = rcfg or RuntimeConfig(backend=args.backend, transport=args.transport, batch=args.batch)
    checkpoint = getattr(args, "checkpoint", None) or shipped_weights(cfg.name)
    return GridJob(cfg, grid=args.grid, replicas=args.replicas, checkpoint=checkpoint, runtime=rcfg,
                   artifacts=getattr(args, "artifacts", "artifacts"), force_compile=getattr(args, "force_compile", False),
                   progress=True, hosts=HostMap.resolve(cfg, args.hosts, args.standby))


def launch(args: argparse.Namespace, t0: float) -> int:
    """Run the grid as the flags say; the exit code (errors raise, one line each)."""
    # 1. everything that can be checked without a cluster fails fast, with a clear message
    t_main = time.time()
    faults = parse_fault(args.inject_fault) if args.inject_fault else {}
    job = plan_job(args, runtime_config(args, faults))
    cfg, checkpoint, rcfg, layout = job.config, job.checkpoint, job.runtime, job.layout
    job.check_hosts()
    for (_, row, col) in faults:
        if not (row < layout.rows and col < layout.cols):
            raise ValueError(f"--inject-fault {args.inject_fault!r}: the grid is {layout.rows}x{layout.cols}, "
                             f"it has no cell ({row}, {col})")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r}: no such file")
    clock = StartupClock(show=True, t0=t0, steps=7 + layout.n_cells)
    journal = None
    try:
        clock.mark("imports", t0, t_main)
        with clock.phase("model", "resolving the model"):
            spec, _ = job.spec, job.slices
        if args.journal:
            journal = Journal.open(args.journal, journal_identity(cfg, spec, args))
    except BaseException:
        clock.close()   # the error line comes next, on a line of its own
        raise
    say(f"config: {cfg.filename}")
    verify = args.verify if args.verify is not None else args.backend == "cpu"
    if verify and args.backend == "emulated":
        say("note: --verify needs real compute; the emulated backend moves zeros, so it is skipped")
        verify = False
    say(f"weights: {checkpoint}" if checkpoint else
        "weights: NONE SHIPPED for this config -> deterministic SEEDED INITIAL WEIGHTS (seed 0), not a trained model")
    if journal is not None and journal.done:
        say(f"journal: {len(journal.done)} sample(s) already done in {args.journal}: skipped")
    swept = sweep_stale()
    if swept:
        say(f"removed {len(swept)} channel file(s) left in /dev/shm by dead runs")

    # 2. artifacts in a thread while Ray starts (or is joined) and the cells' processes start
    namespace = args.namespace or f"bidl-{uuid.uuid4().hex[:8]}"
    t_art = time.time()
    artifacts = job.start_artifacts()
    started = not args.address
    grid = actors = None
    try:
        with clock.phase("ray_start", "starting Ray" if started else f"joining {args.address}"):
            if rcfg.tls:
                use_tls(args.address)   # Ray's TLS for this driver; the channels' TLS is rcfg.tls
            if args.address:
                info = join(args.address, namespace=namespace, log_to_driver=False, logging_level="WARNING")
            else:
                info = start_local(num_cpus=os.cpu_count(), resources={"bidl_device": layout.max_device + 1},
                                   include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False,
                                   logging_level="WARNING", namespace=namespace)
        stop_on_sigterm()   # ray.init installed its own
        cluster = device_map(job.hosts)
        placed = job.layout_on(cluster)   # with a host map: the devices chosen across hosts
        actors = (spawn(placed, cluster.device_nodes, rcfg.actor_gpus())
                  if placed.max_device < len(cluster.device_nodes) else None)
        url = info.dashboard_url
        url = f"http://{url}" if url and not url.startswith("http") else url
        where = (f"joined {args.address}" if args.address else
                 f"embedded private cluster on 127.0.0.1 (session {session_dir()})")
        say(f"ray: {where}, token auth (token: {token_source()}), namespace {namespace}; "
            f"dashboard {url or 'not available'}")
        arts = artifacts.result()
        clock.mark("artifacts", t_art, job.artifacts_done_at or time.time())
        with clock.phase("place", "placing the cells"):
            plan = job.plan(cluster)
        records = getattr(arts, "records", [])
        built = [r for r in records if r.cache == "miss"]
        if built:
            say(f"compiled {len(built)} artifact(s) into {built[0].path.parents[1]}:\n{arts.table()}")
        elif records:
            say(arts.summary_line())
        say(plan.table())
        grid = job.grid(actors=actors, clock=clock)
        grid.start()
        samples, source = samples_for(cfg, plan, args.samples, args.seed, spec.input_high)
        say(f"data: {source}")
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
            keep_alive(grid, url)
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
        wait([artifacts])   # a compile in progress finishes (no half-written artifact is left)
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


def journal_identity(cfg: Any, spec: Any, args: argparse.Namespace) -> dict:
    """What a journal's outputs depend on: the model (config, weights, cut), the backend and the data."""
    data = cfg.get("data")
    test = data.get("test") if hasattr(data, "get") else None
    return {"config": cfg.name, "model": spec.key, "T": spec.T, "backend": args.backend,
            "data": repr(dict(test)) if test else f"synthetic seed {args.seed}"}


def say(text: str) -> None:
    """A line on stdout that does not break the start-up progress bar (on stderr)."""
    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


def keep_alive(grid: Any, url: Optional[str]) -> None:
    """Leave the cells up beside the ``bidl-grid`` host actor until Ctrl-C."""
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
          f"bidl_runtime.driver.keepalive.attach({ctx.namespace!r}, address={address!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the kept-alive grid", flush=True)
    del lease


def attach(args: argparse.Namespace) -> int:
    """``--attach``: run samples through a kept-alive grid."""
    if not args.address or not args.namespace:
        raise ValueError("--attach needs --address and --namespace (printed by the --keep-alive run)")
    grid = None
    try:
        grid = attach_grid(args.namespace, args.address)
        stop_on_sigterm()   # ray.init installed its own
        try:
            cfg = load_config(args.config or grid.plan.config, args.cfg_options)   # for its test data
        except (ValueError, FileNotFoundError):
            cfg = None
        high = load_model(cfg).input_high if cfg is not None else None
        samples, source = samples_for(cfg, grid.plan, args.samples, args.seed, high)
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


def parse_fault(text: str) -> dict:
    """``'1,0:exit:2'`` -> ``{(0, 1, 0): ('exit', 2)}`` (kinds: :data:`bidl_runtime.cell.cell.FAULTS`)."""
    try:
        cell, kind, sample = text.split(":")
        row, col = (int(v) for v in cell.split(","))
        if kind not in FAULTS:
            raise ValueError
        return {(0, row, col): (kind, int(sample))}
    except ValueError:
        raise ValueError(f"--inject-fault {text!r}: expected ROW,COL:KIND:SAMPLE with KIND one of {list(FAULTS)}, "
                         "e.g. 1,0:exit:2") from None
