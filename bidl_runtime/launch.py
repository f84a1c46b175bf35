"""What ``bidl-run`` does once its flags are parsed: the :class:`~bidl_runtime.api.GridJob` chain with
Ray's start overlapped, the progress and summary a user sees, and a clean exit on every path.

    config -> layout -> memory admission (cells) -> [spec -> artifacts] (in a thread) || Ray start ->
    memory admission (cells and weights) -> cell processes spawned -> plan (shipped) -> grid.start -> run
    -> report -> keep-alive or teardown
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import Future, wait
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Optional

import ray
from tqdm import tqdm

from bidl_grid.command import USAGE_ERRORS, exit_now, one_line, stop_on_sigterm
from bidl_models.checkpoint import resolve_checkpoint, shipped_weights
from bidl_models.config import describe_source, load_config, shipped_config
from bidl_models.from_config import load_model
from bidl_models.slicing import check_config_grid

from bidl_runtime.api import GridJob, default_config
from bidl_runtime.cell.cell import FAULTS
from bidl_runtime.cell.contexts import backend_problem
from bidl_runtime.cell.pool import kill, spawn
from bidl_runtime.cell.template import CellTemplate
from bidl_runtime.channels import sweep_stale
from bidl_runtime.cluster.cleanup import claim_token_dir, cleanup, reap_own
from bidl_runtime.cluster.memory import available_bytes, node_memory
from bidl_runtime.cluster.nodes import device_map
from bidl_runtime.cluster.ray_cluster import (join, secure_env, session_dir, start_local, token_env, token_source,
                                              use_tls)
from bidl_runtime.driver.journal import Journal
from bidl_runtime.driver.keepalive import attach as attach_grid
from bidl_runtime.driver.keepalive import host
from bidl_runtime.driver.samples import samples_for
from bidl_runtime.driver.startup import StartupClock
from bidl_runtime.plan import admission
from bidl_runtime.plan.hosts import HostMap
from bidl_runtime.runtime_config import (COMPILE_START_TIMEOUT_S, COMPILED_BACKENDS, COMPUTE_BACKENDS, RUN_BACKEND,
                                         DeviceProfile, RuntimeConfig)

SPEC_CHECK_S = 0.5      # Ray waits this long at most for the model's checks (a recorded spec takes ~0.1 s)
ARTIFACT_NICE = 5       # the model's and artifacts' thread while Ray starts (see Launch._run)
COMPILE_GRACE_S = 5.0   # after Ctrl-C / SIGTERM, a compile in progress gets this long to finish
THREAD_GRACE_S = 3.0    # ... and the run's threads (the verifier's last checks) this long


def runtime_config(args: argparse.Namespace, faults: dict) -> RuntimeConfig:
    """The run's tunables from its flags (checked by :class:`RuntimeConfig`, naming the flag). The
    default backend (:data:`RUN_BACKEND`) falls back to ``cpu``, saying why, where it cannot run."""
    backend = args.backend or RUN_BACKEND
    why = backend_problem(backend)
    if why and args.backend is None:
        say(f"note: the default backend {backend!r} cannot run here ({why}): using the cpu backend")
        backend = "cpu"
    elif why:
        raise ValueError(f"--backend {backend}: {why}")
    if getattr(args, "tls", False) and not args.address:
        raise ValueError("--tls encrypts what crosses hosts: it needs --address (the embedded cluster runs on "
                         "127.0.0.1 only)")
    args.backend = backend
    return RuntimeConfig(backend=backend, transport=args.transport, depth=args.depth, batch=args.batch,
                         max_inflight=args.max_inflight, threads_per_cell=args.threads_per_cell,
                         gpus_per_cell=args.gpus_per_cell, chunk_compile=args.chunk_compile, amp=args.amp,
                         **({"start_timeout_s": COMPILE_START_TIMEOUT_S} if backend in COMPILED_BACKENDS
                            else {}),
                         profile=DeviceProfile(ref_fps=args.profile_fps), faults=faults,
                         max_restarts=args.max_restarts, tls=getattr(args, "tls", False),
                         verify_beside=getattr(args, "verify_beside", False))


def plan_job(args: argparse.Namespace, rcfg: Optional[RuntimeConfig] = None) -> GridJob:
    """The job the flags shared by ``bidl-run`` and ``bidl-plan`` describe (the same defaults)."""
    cfg = (load_config(args.config, args.cfg_options, args.config_root) if args.config
           else load_config(default_config(), args.cfg_options))   # the shipped file, never one found elsewhere
    rcfg = rcfg or RuntimeConfig(backend=args.backend or RUN_BACKEND, transport=args.transport, batch=args.batch)
    given = getattr(args, "checkpoint", None)
    checkpoint = resolve_checkpoint(given, cfg) if given else shipped_weights(cfg.name)
    return GridJob(cfg, grid=args.grid, replicas=args.replicas, checkpoint=checkpoint, runtime=rcfg,
                   artifacts=getattr(args, "artifacts", "artifacts"), force_compile=getattr(args, "force_compile", False),
                   progress=True, hosts=HostMap.resolve(cfg, args.hosts, args.standby))


def launch(args: argparse.Namespace, t0: float, template: Optional[CellTemplate] = None) -> int:
    """Run the grid as the flags say; the exit code (errors raise, one line each; Ctrl-C or SIGTERM
    at any phase: everything stopped, one line saying where it was, 130). ``template``: the cell
    template forked at the command's start (the embedded cluster's workers fork from it)."""
    return Launch(args, t0, template).run()


class Launch:
    """One ``bidl-run``: its stages, the phase it is in (an interrupt's line names it) and a teardown
    that runs on every path (cells, Ray and its processes, channel files, a compile in progress)."""

    def __init__(self, args: argparse.Namespace, t0: float, template: Optional[CellTemplate] = None):
        self.args, self.t0, self.template = args, t0, template
        self.phase = "checking the flags"   # and the config, the memory, what dead runs left
        self.memory: Optional[dict] = None   # this machine's available memory before the embedded cluster
        self.job: Optional[GridJob] = None
        self.clock: Optional[StartupClock] = None
        self.journal: Optional[Journal] = None
        self.artifacts: Optional[Future] = None
        self.grid: Any = None
        self.actors: Optional[dict] = None
        self.started = False          # this run started the (embedded) cluster
        self.interrupted = False
        self.torn_down = False

    def run(self) -> int:
        try:
            return self._run()
        except (KeyboardInterrupt, SystemExit) as e:
            if isinstance(e, SystemExit) and e.code != signal.SIGTERM:   # Ray's start-up handler: sys.exit(15)
                raise
            self.interrupted = True
            line = self._interrupted_line()
        except Exception as e:  # noqa: BLE001 - the command's wrapper prints it, unless a thread would abort the exit
            self._teardown()
            if not threads_done(THREAD_GRACE_S) and "--debug" not in sys.argv:
                print(f"{bar_break()}error: {one_line(e)}", file=sys.stderr, flush=True)
                exit_now(2 if isinstance(e, USAGE_ERRORS) else 1)
            raise
        finally:
            self._teardown()
        print(bar_break() + line, file=sys.stderr, flush=True)
        if not threads_done(THREAD_GRACE_S):
            exit_now(130)   # a thread still inside torch (the verifier's reference run) would abort at exit
        return 130

    def _run(self) -> int:
        args = self.args
        # 1. everything that can be checked without a cluster fails fast, with a clear message
        t_main = time.time()
        faults = parse_fault(args.inject_fault) if args.inject_fault else {}
        job = self.job = plan_job(args, runtime_config(args, faults))
        cfg, checkpoint, rcfg, layout = job.config, job.checkpoint, job.runtime, job.layout
        job.check_hosts()
        check_config_grid(cfg, layout.rows, layout.cols)   # what the config alone rules out, before any model
        say(describe_source(cfg))
        for (_, row, col) in faults:
            if not (row < layout.rows and col < layout.cols):
                raise ValueError(f"--inject-fault {args.inject_fault!r}: the grid is {layout.rows}x{layout.cols}, "
                                 f"it has no cell ({row}, {col})")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r}: no such file")
        verify = args.verify if args.verify is not None else args.backend in COMPUTE_BACKENDS
        say(f"weights: {checkpoint}" if checkpoint else
            "weights: NONE SHIPPED for this config -> deterministic SEEDED INITIAL WEIGHTS (seed 0), not a trained model")
        if verify and args.backend == "emulated":
            say("note: --verify needs real compute; the emulated backend moves zeros, so it is skipped")
            verify = False
        done = cleanup()   # what dead runs left (orphaned Ray processes, token dirs) goes before the memory check
        if not done.empty:
            say(done.line())
        swept = sweep_stale()
        if swept:
            say(f"removed {len(swept)} channel file(s) left in /dev/shm by dead runs")
        if not args.address and args.memory_check:   # the cells' base alone (the model is not resolved yet),
            self.memory = {"local": available_bytes()}   # before Ray starts: a grid far too big stops here
            admission.check(admission.cells_only(layout.rows, layout.cols, layout.replicas, rcfg.backend,
                                                 ray_node=True), self.memory)
        clock = self.clock = StartupClock(show=True, t0=self.t0, steps=7 + layout.n_cells)
        clock.mark("imports", self.t0, t_main)

        # 2. the model (seconds of shape tracing) and its artifacts in a thread, a little below this
        #    process's priority, while Ray starts (or is joined): its raylet gives its agents (Python
        #    processes importing much) 15 s to come up, which a loaded machine can exceed
        self.phase = "starting Ray"
        namespace = args.namespace or f"bidl-{uuid.uuid4().hex[:8]}"
        self.artifacts = job.start_artifacts(nice=ARTIFACT_NICE)
        job.check_spec(SPEC_CHECK_S)   # a model read from its record is checked before Ray starts
        self.started = not args.address
        dashboard = args.dashboard or args.keep_alive
        with clock.phase("ray_start", "starting Ray" if self.started else f"joining {args.address}"):
            if rcfg.tls:
                use_tls(args.address)   # Ray's TLS for this driver; the channels' TLS is rcfg.tls
            if args.address:
                info = join(args.address, namespace=namespace, log_to_driver=False, logging_level="WARNING")
            else:
                inherited = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                secure_env()
                if not inherited:   # a token dir this process made: a later run removes it if this one is killed
                    claim_token_dir()
                with self.template.workers() if self.template is not None else nullcontext(), \
                        self._term_during_start():
                    info = start_local(num_cpus=os.cpu_count(), resources={"bidl_device": layout.max_device + 1},
                                       include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=False,
                                       logging_level="WARNING", namespace=namespace)
        stop_on_sigterm()   # ray.init installed its own
        job.renice()
        cluster = device_map(job.hosts)
        self.phase = "resolving the model"
        try:
            spec = job.wait_spec()   # usually resolved while Ray started
        finally:
            if job.spec_times is not None:
                clock.mark("model", *job.spec_times)
        self.admit(cluster if args.address else None)   # now with each column's weights
        if args.journal:
            self.journal = Journal.open(args.journal, journal_identity(cfg, spec, args))
            if self.journal.done:
                say(f"journal: {len(self.journal.done)} sample(s) already done in {args.journal}: skipped")
        self.phase = "starting the cells"
        placed = job.layout_on(cluster)   # with a host map: the devices chosen across hosts
        self.actors = (spawn(placed, cluster.device_nodes, rcfg.actor_gpus())
                       if placed.max_device < len(cluster.device_nodes) else None)
        url = info.dashboard_url if dashboard or args.address else None
        url = f"http://{url}" if url and not url.startswith("http") else url
        shown = url or ("not available" if dashboard or args.address else "off (--dashboard or --keep-alive starts it)")
        where = (f"joined {args.address}" if args.address else
                 f"embedded private cluster on 127.0.0.1 (session {session_dir()})")
        say(f"ray: {where}, token auth (token: {token_source()}), namespace {namespace}; dashboard {shown}")
        if not self.artifacts.done():
            self.phase = "compiling the artifacts"
        arts = self.artifacts.result()
        clock.mark("artifacts", job.spec_times[1], job.artifacts_done_at or time.time())
        self.phase = "starting the cells"
        with clock.phase("place", "placing the cells"):
            plan = job.plan(cluster)
        records = getattr(arts, "records", [])
        built = [r for r in records if r.cache == "miss"]
        if built:
            say(f"compiled {len(built)} artifact(s) into {built[0].path.parents[1]}:\n{arts.table()}")
        elif records:
            say(arts.summary_line())
        say(plan.table())
        grid = self.grid = job.grid(actors=self.actors, clock=clock)
        grid.start()
        self.phase = "streaming"
        samples, source = samples_for(None if args.synthetic else cfg, plan, args.samples, args.seed, spec.input_high)
        say(f"data: {source}")
        report = grid.run(samples, total=args.samples, progress=True, verify=verify, journal=self.journal,
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
            self.phase = "keeping the grid alive"
            keep_alive(grid, url)
        return 0 if ok else 1

    @contextmanager
    def _term_during_start(self) -> Iterator[None]:
        """While the embedded cluster starts, SIGTERM stops the run at once from its handler (Ray's
        own handler, or an exception raised from one, can land in an import's callback, where Python
        prints it and goes on): the cluster's processes removed, the exit handlers run, exit 130.
        Ray's ``init`` is kept from installing its own meanwhile."""
        def now(signum: int, frame: Any) -> None:
            shield()
            print(f"{bar_break()}interrupted while starting Ray: stopped, nothing streamed", file=sys.stderr, flush=True)
            reap_own(grace_s=0.5)
            if self.template is not None:
                self.template.close()
            exit_now(130)
        real = signal.signal

        def keep(sig: int, handler: Any) -> Any:   # Ray's init: not for SIGTERM while this holds
            return signal.getsignal(sig) if sig == signal.SIGTERM else real(sig, handler)
        real(signal.SIGTERM, now)
        signal.signal = keep
        try:
            yield
        finally:
            signal.signal = real
            stop_on_sigterm()

    def admit(self, cluster: Any) -> None:
        """Refuse (ValueError, one line) a plan whose cells (with their weights and channel slots) do
        not fit the nodes' available memory: this machine as it was before the embedded cluster started
        (``cluster`` None), else the joined cluster's nodes."""
        if not self.args.memory_check:
            return
        job = self.job
        if cluster is None:
            plan, have, addresses = job.preview(), self.memory or {"local": available_bytes()}, {}
        else:
            plan = replace(job.preview(cluster.device_nodes), driver_node=cluster.driver_node)
            have, addresses = node_memory(cluster)
        m = memory_need(job, plan, samples=self.args.samples, ray_node=cluster is None)
        admission.check(m, {k: v for k, v in have.items() if v is not None}, plan.driver_node, addresses)

    def _interrupted_line(self) -> str:
        """The one line an interrupt prints: how far the run got."""
        s = self.grid.stream if self.grid is not None else None
        if self.phase == "keeping the grid alive":
            return f"interrupted: stopped the kept-alive grid ({len(self.grid.plan.cells)} cells)"
        if self.phase == "streaming" and s is not None:
            kept = (f"; {len(s.outputs)} recorded in {self.args.journal}: a rerun with --journal {self.args.journal} "
                    "skips them" if self.journal is not None else "; --journal FILE would let a rerun skip them")
            return (f"interrupted after {s.collected} sample(s) done, {s.inflight} in flight, "
                    f"{len(s.rejected)} rejected{kept}")
        return f"interrupted while {self.phase}: stopped, nothing streamed"

    def _teardown(self) -> None:
        """Stop whatever this run started, on every path (once); a second Ctrl-C / SIGTERM meanwhile is ignored."""
        if self.torn_down:
            return
        self.torn_down = True
        shield()
        if self.clock is not None:
            self.clock.close()
        if self.artifacts is not None:   # a compile in progress finishes (atomic: no half-written artifact)
            wait([self.artifacts], timeout=COMPILE_GRACE_S if self.interrupted else None)
            if not self.artifacts.done():
                self._drop_partial_builds()
        if self.journal is not None:
            self.journal.close()
        if self.grid is not None:
            self.grid.close()
        elif self.actors:
            for a in self.actors.values():
                kill(a)
        if self.started:   # also after a start-up cut short: ray.shutdown stops what ray.init had started
            ray.shutdown()
            reap_own()      # and what it could not (the agents of a dead raylet, a GCS not handed over yet)
        if self.template is not None:
            self.template.close()
        sweep_stale()

    def _drop_partial_builds(self) -> None:
        """The temporary directories of a compile this process leaves unfinished (interrupted)."""
        root = self.job.options.root if self.job is not None else None
        if root is not None and root.is_dir():
            for tmp in root.rglob(f".*.tmp-{os.getpid()}"):
                shutil.rmtree(tmp, ignore_errors=True)


def bar_break() -> str:
    """A newline where a progress bar (a compile's, in its thread) may hold the current line: a bar
    still open, or any output that is not a terminal (a closed bar's carriage return is no line end
    there), so that a last line printed after it starts on a line of its own."""
    return "\n" if getattr(tqdm, "_instances", None) or not sys.stderr.isatty() else ""


def threads_done(timeout: float) -> bool:
    """Wait up to ``timeout`` for this run's worker threads (``bidl-*``: feeders, the verifier, a
    compile) to end; whether they all did."""
    deadline = time.monotonic() + timeout
    for t in threading.enumerate():
        if t.name.startswith("bidl-") and t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("bidl-"))


def shield() -> None:
    """Ignore Ctrl-C and SIGTERM from here on (a teardown in progress finishes; it is bounded)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except ValueError:   # not the main thread
            pass


def memory_need(job: GridJob, plan: Any, samples: int = 0, ray_node: bool = False) -> admission.MemoryNeed:
    """What ``plan`` (``job``'s, placed) needs in memory per node (:func:`bidl_runtime.plan.admission.need`)."""
    return admission.need(plan, job.runtime.backend, job.weight_bytes(), job.runtime.depth,
                          samples=samples, ray_node=ray_node)


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

    stop_on_sigterm()   # kill PID stops it as cleanly as Ctrl-C (cells, Ray, shm)
    print(f"\nkeeping the grid alive: {len(grid.plan.cells)} cells loaded and idle (dashboard {url}); "
          f"Ctrl-C or kill -TERM {os.getpid()} stops it")
    print(f"join with: {token + ' ' if token else ''}python -m bidl_runtime.run --attach --address {address} "
          f"--namespace {ctx.namespace}")
    print(f"     or in Python{' (with ' + token + ')' if token else ''}: "
          f"bidl_runtime.driver.keepalive.attach({ctx.namespace!r}, address={address!r})", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:   # Ctrl-C or SIGTERM: the caller stops the grid and says so (130)
        del lease


def attach(args: argparse.Namespace) -> int:
    """``--attach``: run samples through a kept-alive grid."""
    if not args.address or not args.namespace:
        raise ValueError("--attach needs --address and --namespace (printed by the --keep-alive run)")
    grid = None
    try:
        grid = attach_grid(args.namespace, args.address)
        stop_on_sigterm()   # ray.init installed its own
        try:   # for its test data; never a same-named file of the current directory
            cfg = load_config(args.config or shipped_config(grid.plan.config), args.cfg_options)
        except (ValueError, FileNotFoundError):
            cfg = None
        if cfg is not None:
            print(describe_source(cfg))
        high = load_model(cfg).input_high if cfg is not None else None
        samples, source = samples_for(cfg, grid.plan, args.samples, args.seed, high)
        verify = args.verify if args.verify is not None else grid.config.backend in COMPUTE_BACKENDS
        print(f"attached to the kept-alive grid {grid.plan.rows}x{grid.plan.cols} of {grid.plan.config}; data: {source}")
        report = grid.run(samples, total=args.samples, progress=True, verify=verify, trace=args.trace)
        print(report.summary())
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=1))
        ok = report.verify is None or report.verify["equal"] == report.verify["compared"]
        return 0 if ok else 1
    except SystemExit as e:   # SIGTERM while ray.init's own handler was in place
        if e.code == signal.SIGTERM:
            raise KeyboardInterrupt from None
        raise
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
