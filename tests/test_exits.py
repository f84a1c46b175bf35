"""Holding at the limits and under attack (issue 21): absurd sizes fail in one line before anything is
allocated; a grid starts only if its cells fit the memory available; SIGTERM at every phase exits 130
with one line and leaves nothing; what a killed driver leaves is removed by the next run (or
``--cleanup``), never what a live cluster runs; configs are code: the file loaded is printed, a
config's ``sys.exit()`` is an error, and a same-named file under ``./configs`` never replaces the
shipped default."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bidl_models.slicing import GridLayout, MAX_CELLS
from bidl_runtime.cluster import cleanup as cl
from bidl_runtime.plan import admission
from cli_runs import ENV, CliRun, run_cli
from conftest import make_plan, tiny_glyphs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """Flags of a small model for the command line: the default config at 2x16x16 under another name
    (no shipped weights: seeded ones), no data; the cpu backend (these runs are about exits and what is
    left behind, not the compiled backend: no AOTInductor build for their cells)."""
    from bidl_runtime.api import default_config
    path = tmp_path_factory.mktemp("tiny-config") / "tinyglyphs.py"
    path.write_text(f"_base_ = {str(default_config())!r}\n"
                    "model = dict(backbone=dict(h0=16, w0=16))\nmodels_compile_inputshape = [[1, 2, 16, 16]]\n"
                    "data = None\n")
    return ["--config", str(path), "--backend", "cpu"]


# ------------------------------------------------------------------------------ sizes

@pytest.mark.parametrize("args, want", [
    (["--grid", "99999999999999999999x1"], "expected at most 4096 cells"),
    (["--grid", "1x100000000"], "= 100000000 cells; expected at most 4096"),
    (["--replicas", "100000000"], "x 100000000 replica(s) = 100000000 cells"),
    (["--grid", "1x" + "9" * 5000], "expected at most 4096 cells"),
    (["--samples", "99999999999999999999"], "--samples 99999999999999999999: expected an int >= 1"),
    (["--seed", "-1"], "--seed -1: expected an int >= 0"),
    (["--batch", "99999999999"], "--batch 99999999999: expected an int >= 1 (at most 4096"),
    (["--depth", "999999999999"], "--depth 999999999999: expected an int >= 1 (at most 64"),
    (["--max-inflight", "10000000000"], "--max-inflight 10000000000: expected an int >= 1"),
    (["--threads-per-cell", "100000"], "--threads-per-cell 100000: expected an int >= 1"),
])
def test_absurd_sizes_fail_in_one_line_before_anything_is_allocated(args, want, capsys):
    from bidl_runtime.run import main
    t0 = time.perf_counter()
    assert main(args) == 2
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and want in err[0], err
    assert len(err[0]) < 300 and took < 1.0, (took, err)


def test_absurd_sizes_fail_fast_from_the_command_line_too():
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--grid", "99999999999999999999x1"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    took = time.perf_counter() - t0
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "at most 4096 cells" in r.stderr, r.stderr
    assert took < 5.0, f"{took:.1f} s (Python's start included; the check itself comes before torch is imported)"


def test_layout_bounds_device_ids_and_cells():
    with pytest.raises(ValueError, match="expected int device ids in 0..65535"):
        GridLayout.resolve({"lynxi_devices": [[0, 10 ** 12]]})
    with pytest.raises(ValueError, match="device ids up to"):
        GridLayout.resolve({"lynxi_devices": [[0, 60000]]}, replicas=2)
    with pytest.raises(ValueError, match=f"at most {MAX_CELLS}"):
        GridLayout.resolve(None, "64x64", replicas=2)


# ------------------------------------------------------------------------------ memory admission

def test_admission_refuses_a_plan_that_does_not_fit_in_one_line():
    plan = make_plan(tiny_glyphs(20), (20, 6))
    m = admission.need(plan, "cpu", [1000] * 6, depth=2, samples=64, ray_node=True)
    each = admission.CELL_BASE_BYTES["cpu"]
    assert len(m.cell_bytes()) == 120 and all(v >= each for v in m.cell_bytes().values())
    assert m.total >= 120 * each + admission.RAY_NODE_BYTES
    admission.check(m, {"local": m.total})                  # fits exactly: admitted
    with pytest.raises(ValueError) as e:
        admission.check(m, {"local": 21_300_000_000})
    msg = str(e.value)
    assert msg.startswith(f"grid 20x6 needs about {m.total / 1e9:.1f} GB for 120 cells (0.22 GB each) and Ray "), msg
    assert "this node has 21.3 GB available" in msg and "--no-memory-check" in msg and "\n" not in msg
    other = admission.need(make_plan(tiny_glyphs(20), (2, 2), device_nodes=["n1"] * 2 + ["n2"] * 2), "emulated",
                           [0, 0], depth=2)
    with pytest.raises(ValueError, match=r"on node 10\.0\.0\.2 for 2 cells .* node 10\.0\.0\.2 has 0\.10 GB"):
        admission.check(other, {"n2": 100_000_000}, driver_node="n1", addresses={"n2": "10.0.0.2"})


def test_bidl_plan_shows_each_cells_memory_and_the_total(capsys):
    from bidl_runtime.plan.__main__ import main
    assert main(["--grid", "2x2", "--backend", "emulated"]) == 0
    out = capsys.readouterr().out
    assert "memory" in out.splitlines()[2] and " 0.21 GB  local" in out, out     # base + channel slots
    assert "memory, estimated: 0.20 GB per emulated cell (measured" in out
    assert "this node: about 1.5 GB for 4 cells (0.21 GB each) and Ray (0.68 GB)" in out, out


@pytest.mark.slow
def test_an_oversized_grid_is_refused_before_ray_starts(tmp_path, tiny):
    r = run_cli("--grid", "20x6", "--replicas", "30", "--artifacts", str(tmp_path), *tiny, timeout=300)
    err = r.lines("error:")
    assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
    assert err[0].startswith("error: grid 20x6 x 30 replicas needs about ") and "for 3600 cells" in err[0], err
    assert "GB available" in err[0] and "--no-memory-check" in err[0]
    assert not r.lines("ray:") and not r.leftovers()


# ------------------------------------------------------------------------------ configs are code

PLANTED = """import pathlib
pathlib.Path({marker!r}).write_text("the planted config ran")
raise SystemExit("planted")
"""


@pytest.mark.slow
def test_a_planted_default_config_in_the_current_directory_is_never_loaded(tmp_path):
    from bidl_runtime.api import DEFAULT_CONFIG, default_config
    marker = tmp_path / "ran"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / f"{DEFAULT_CONFIG}.py").write_text(PLANTED.format(marker=str(marker)))
    env = dict(ENV, PYTHONPATH=str(ROOT))
    plan = subprocess.run([sys.executable, "-m", "bidl_runtime.plan", "--grid", "2x1"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[0] == f"config: {default_config().resolve()} (a Python file: it ran when loaded)"
    # bidl-run reads the same default, prints it, and stops at a bad flag before Ray
    run = run_cli("--grid", "2x1", "--inject-fault", "7,7:exit:1", cwd=str(tmp_path), env=env, timeout=300)
    assert run.returncode == 2 and f"config: {default_config().resolve()}" in run.stdout, run.stdout + run.stderr
    assert not marker.exists(), "the planted ./configs file ran"


def test_a_configs_sys_exit_is_a_one_line_error(tmp_path, capsys):
    from bidl_runtime.plan.__main__ import main
    bad = tmp_path / "exits.py"
    bad.write_text("import sys\nsys.exit(0)\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: config {str(bad)!r} called sys.exit(0) while loading"]


@pytest.mark.parametrize("module", ["bidl_runtime.run", "bidl_runtime.plan", "compile"])
def test_help_says_configs_are_code(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "Python" in text and "run when loaded" in text.replace("runs when", "run when"), text


# ------------------------------------------------------------------------------ leftovers of dead runs

def test_dead_runs_are_sessions_without_a_cluster_process_or_a_live_creator(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = f"/tmp/ray/session_2026-01-01_00-00-00_000001_{dead.pid}"
    mine = f"/tmp/ray/session_2099-01-01_00-00-00_000001_{os.getpid()}"
    procs = [cl.RayProcess(11, "ray::DashboardA", gone), cl.RayProcess(12, "ray::RuntimeEnv", gone),
             cl.RayProcess(21, "ray::DashboardA", gone + "x"), cl.RayProcess(22, "raylet", gone + "x"),
             cl.RayProcess(31, "ray::DashboardA", mine)]
    assert {s: [p.pid for p in ps] for s, ps in cl.dead_runs(procs).items()} == {gone: [11, 12]}
    # token dirs: only one whose recorded owner is gone
    for name, owner in (("bidl-auth-dead", f"{dead.pid} 1.00"), ("bidl-auth-live", None), ("bidl-auth-none", "")):
        d = tmp_path / name
        d.mkdir()
        if owner is None:
            owner = f"{os.getpid()} {cl.start_time(os.getpid()):.2f}"
        if owner:
            (d / cl.OWNER).write_text(owner)
    assert [d.name for d in cl.stale_token_dirs(tmp_path)] == ["bidl-auth-dead"]


# ------------------------------------------------------------------------------ SIGTERM at every phase

@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return str(tmp_path_factory.mktemp("exits-artifacts"))


PHASES = {   # phase: (flags, text to wait for, then seconds, the line's start)
    "imports": ([], None, 1.5, "interrupted"),
    "model": ([], "config:", 0.0, ("interrupted while checking the flags", "interrupted while starting Ray")),  # the model resolves while Ray starts
    "ray start": ([], "starting Ray", 1.0, "interrupted while starting Ray"),
    "cells": ([], "plan for", 0.0, ("interrupted while starting the cells", "interrupted after ")),
    "streaming": ([], "data:", 2.0, "interrupted after "),
    "keep-alive": (["--keep-alive", "--samples", "4"], "join with:", 1.0,
                   "interrupted: stopped the kept-alive grid (4 cells)"),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
def test_sigterm_at_every_phase_exits_130_with_one_line_and_leaves_nothing(phase, artifacts, tiny):
    flags, text, after, want = PHASES[phase]
    run = CliRun("--grid", "2x2", "--samples", "100000", "--artifacts", artifacts, *tiny, *flags)
    try:
        if text is not None:
            assert run.wait_for(text), run.stdout[-2000:] + run.stderr[-2000:]
        time.sleep(after)
        t0 = time.perf_counter()
        run.stop(signal.SIGTERM)
        took = time.perf_counter() - t0
    finally:
        run.kill_all()
    out = run.stdout + run.stderr
    said = run.lines("interrupted")
    print(f"{phase}: exit {run.returncode} {took:.1f} s after SIGTERM: {said}")
    assert run.returncode == 130, out[-3000:]
    assert len(said) == 1 and said[0].startswith(want), out[-3000:]   # want: a prefix, or a few
    assert "Traceback" not in out and "Fatal Python" not in out and not run.lines("error:"), out[-3000:]
    assert not run.leftovers(), "the stopped run left processes behind"
    assert not run.shm_files()


@pytest.mark.slow
def test_sigterm_during_a_compile_exits_130_and_leaves_no_partial_artifact(tmp_path):
    """The default model compiled afresh (tens of seconds): SIGTERM once Ray is up, while it compiles."""
    run = CliRun("--grid", "2x2", "--samples", "10", "--artifacts", str(tmp_path))
    try:
        assert run.wait_for("ray: "), run.stderr[-2000:]
        run.stop(signal.SIGTERM)
    finally:
        run.kill_all()
    said = run.lines("interrupted")
    print("compile:", said)
    assert run.returncode == 130 and len(said) == 1 and said[0].startswith("interrupted while "), run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Fatal Python" not in run.stderr
    assert not list(tmp_path.rglob("*.tmp-*")), "a half-written artifact was left"
    assert not run.leftovers() and not run.shm_files()


@pytest.mark.slow
def test_a_killed_drivers_leftovers_are_removed_by_cleanup_and_live_clusters_kept(ray_local, tmp_path, tiny):
    """Last in the module (its live cluster, ray_local, stays up to the module's end)."""
    import ray
    live = {p.pid for p in cl.ray_processes() if p.name in cl.CLUSTER_PROCESSES and _creator(p) == os.getpid()}
    assert len(live) == 2   # this test process's own cluster (GCS and raylet): a live cluster of this user
    own_token = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}   # the run makes its token dir
    run = CliRun("--grid", "2x1", "--samples", "100000", "--artifacts", str(tmp_path), *tiny, env=own_token)
    try:
        assert run.wait_for("data:"), run.stderr[-3000:]
        token = next(ln.split("token: ", 1)[1].split(")")[0] for ln in run.lines("ray:"))
        run.stop(signal.SIGKILL)
        time.sleep(3)
        left = run.processes()
        print("left by the killed driver:", left)
        r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--cleanup"], capture_output=True, text=True,
                           env=ENV, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("cleanup: "), r.stdout + r.stderr
        if left:
            assert "orphaned Ray process(es)" in r.stdout and f"_{run.pid}" in r.stdout, r.stdout
        assert not run.leftovers(), "cleanup left the killed driver's processes"
        assert not Path(token).parent.exists() and str(Path(token).parent) in r.stdout, r.stdout
        assert not run.shm_files() or all(not Path("/dev/shm", f).exists() for f in run.shm_files())
    finally:
        run.kill_all()
    assert all(Path(f"/proc/{p}").exists() for p in live), "cleanup touched a live cluster"
    assert Path(os.environ["RAY_AUTH_TOKEN_PATH"]).is_file(), "cleanup removed a live process's token dir"
    assert ray.get(ray.remote(lambda: 1).remote(), timeout=60) == 1


def _creator(p: cl.RayProcess) -> int:
    return int(cl.SESSION.match(p.session + "/logs/").group(3))
