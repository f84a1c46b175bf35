"""The README's main command on this machine, its planning errors, and a fault drill: clear
messages, the right exit codes, and no Ray processes left behind (each run's own: its process group and
the Ray sessions it created, never another cluster on the machine; see cli_runs)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_runs import ENV, CliRun, run_cli

pytestmark = pytest.mark.slow
# the main command runs the default (compiled) backend; the drills below are about the runtime, not the
# backend, and take the cpu one (no Inductor build for each of their grids)
CPU = ("--backend", "cpu")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli-artifacts"))


def test_main_command_outputs_equal_reference(artifacts):
    t0 = time.perf_counter()
    r = run_cli("--grid", "3x2", "--samples", "6", "--artifacts", artifacts)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "outputs equal reference: 6/6 samples bit-exact" in out and "same compiled programs (aoti)" in out
    assert "backend compiled" in out and "verification: " in out
    for cell in ("cell[0,0]@dev0", "cell[2,1]@dev5"):
        assert cell in out
    assert "time-step frames/s" in out and "dashboard off (--dashboard or --keep-alive starts it)" in out
    print(f"CLI 3x2 run: {time.perf_counter() - t0:.1f} s")
    assert not r.leftovers(), "the run left Ray processes behind"


def test_planning_errors_fail_fast_without_ray():
    # four separate commands, started together (each fails on its own; none waits for another)
    runs = [(CliRun(*args), want) for args, want in (
        (("--grid", "30x1"), "rows <= T"), (("--grid", "3by2"), "expected RxC"),
        (("--config", "resnetlif50-itout-b8x1-cifar10dvs_mp", "--grid", "1x3"), "2 segment models"),
        (("--config", "no-such-config"), "no-such-config"))]
    for run, want in runs:
        run.finish(600)
        assert run.returncode == 2 and want in run.stderr, (run.proc.args, run.stderr[-2000:])


def test_fault_drill_restarts_the_cell_and_replays(artifacts):
    r = run_cli("--grid", "2x2", "--samples", "8", "--artifacts", artifacts, *CPU, "--inject-fault", "1,0:exit:3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "outputs equal reference: 8/8 samples bit-exact" in r.stdout
    assert "restarts: 1" in r.stdout and "cell[1,0]@dev2 died" in r.stdout, r.stdout


def test_past_max_restarts_the_run_stops_in_one_line_and_cleans_up(artifacts):
    t0 = time.perf_counter()
    r = run_cli("--grid", "2x2", "--samples", "8", "--artifacts", artifacts, *CPU, "--inject-fault", "1,0:exit:3",
                "--max-restarts", "0")
    assert r.returncode == 1, r.stdout + r.stderr
    err = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "cell[1,0]@dev2 failed: the actor died" in err[0], r.stderr
    assert "--max-restarts 0" in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert time.perf_counter() - t0 < 300
    assert not r.leftovers(), "the failed run left Ray processes behind"
    assert not r.shm_files()


def test_a_failed_start_up_leaves_nothing_behind(artifacts):
    """A cell that fails while the grid is wired: one line naming it, no Ray process, no /dev/shm file."""
    r = run_cli("--grid", "2x2", "--samples", "4", "--artifacts", artifacts, *CPU, "--inject-fault", "0,1:connect:0")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "error: wiring the grid's channels failed: cell[0,1]@dev1: injected fault (connect)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not r.leftovers()
    assert not r.shm_files()


def test_errors_are_one_line_and_debug_shows_the_traceback(artifacts, tmp_path, capsys):
    bad = tmp_path / "trunc.pth"
    from bidl_models.checkpoint import SHIPPED_WEIGHTS
    from bidl_runtime.run import main
    bad.write_bytes((SHIPPED_WEIGHTS / "clif3fc3dm_itout-b16x1-dvsglyphs.pth").read_bytes()[:3000])
    # the two that need a process of their own (a damaged checkpoint is read while Ray starts; --debug's
    # traceback is the interpreter's) start now and are checked below
    damaged = CliRun("--samples", "2", "--artifacts", artifacts, "--checkpoint", str(bad))
    debug = CliRun("--samples", "2", "--artifacts", artifacts, "--depth", "0", "--debug")
    # flags refused before a model, a thread or Ray: the command's own code, in this process
    for args, want in ((["--depth", "0"], "--depth 0: expected an int >= 1"),
                       (["--profile-fps", "0"], "--profile-fps 0: expected a finite number"),
                       (["--max-restarts", "-1"], "--max-restarts -1: expected an int >= 0"),
                       (["--backend", "cuda"], "--backend cuda: no CUDA device")):
        capsys.readouterr()
        rc = main(["--samples", "2", "--artifacts", artifacts, *args])
        stderr = capsys.readouterr().err
        err = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip().startswith("error:")]
        assert rc == 2 and len(err) == 1 and want in err[0], (args, stderr)
        assert "Traceback" not in stderr
    r = damaged.finish(600)
    err = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip().startswith("error:")]
    assert r.returncode == 2 and len(err) == 1 and "trunc.pth' cannot be read: truncated or damaged" in err[0], r.stderr
    assert "Traceback" not in r.stderr
    import shutil

    from compile.manifest import PROGRAM
    if not list(Path(artifacts).rglob(PROGRAM)):   # run alone: compile the 2x2 artifacts first
        assert run_cli("--grid", "2x2", "--samples", "1", "--artifacts", artifacts, *CPU).returncode == 0
    broken = tmp_path / "broken-artifacts"
    shutil.copytree(artifacts, broken)
    prog = sorted(broken.rglob(PROGRAM))[0]
    prog.write_bytes(prog.read_bytes()[:100])
    r = run_cli("--grid", "2x2", "--samples", "2", "--artifacts", str(broken), *CPU)
    err = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if ln.strip().startswith("error:")]
    assert r.returncode in (1, 2) and len(err) == 1 and str(prog.parent.name) in err[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    r = debug.finish(600)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ValueError: --depth 0" in r.stderr


def test_sigterm_stops_like_ctrl_c_and_cleans_up(artifacts):
    run = CliRun("--grid", "2x2", "--samples", "100000", "--artifacts", artifacts, *CPU, "--cfg-options", "data=None")
    try:
        assert run.wait_for("data:"), run.stdout[-3000:] + run.stderr[-3000:]
        time.sleep(3)   # streaming
        run.stop(signal.SIGTERM)
    finally:
        run.kill_all()
    rest = run.stdout + run.stderr
    assert run.returncode == 130, rest[-3000:]
    assert "interrupted after" in rest and "Traceback" not in rest and "Fatal Python" not in rest, rest[-3000:]
    assert not run.leftovers(), "the stopped run left Ray processes behind"
    assert not run.shm_files()


def test_journal_resumes_a_stream(artifacts, tmp_path):
    journal = tmp_path / "run.jsonl"
    r = run_cli("--grid", "2x1", "--samples", "5", "--artifacts", artifacts, *CPU, "--journal", str(journal),
                "--json", str(tmp_path / "a.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli("--grid", "2x1", "--samples", "8", "--artifacts", artifacts, *CPU, "--journal", str(journal),
                "--json", str(tmp_path / "b.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "journal: 5 sample(s) already done" in r.stdout and "8 done (5 from the journal)" in r.stdout, r.stdout
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert all(a["outputs"][i] == b["outputs"][i] for i in a["outputs"]) and len(b["outputs"]) == 8
    assert {c["samples"] for c in b["cells"]} == {3}, "only the 3 new samples went through the grid"


def test_keep_alive_cells_stay_usable_from_another_process(artifacts, tmp_path):
    """--keep-alive: the cells stay up after the run; a second process attaches with the printed
    address and runs samples through the same cell processes; Ctrl-C ends it all."""
    first = tmp_path / "first.json"
    run = CliRun("--grid", "2x1", "--samples", "4", "--artifacts", artifacts, *CPU, "--keep-alive", "--json", str(first))
    try:
        run.wait_for("join with:")
        time.sleep(0.5)
        out = run.stdout
        m = re.search(r"join with: RAY_AUTH_TOKEN_PATH=(\S+) python -m bidl_runtime.run --attach --address (\S+) "
                      r"--namespace (\S+)", out)
        assert m, out[-3000:]
        token_path, address, namespace = m.groups()
        assert token_path == os.environ["RAY_AUTH_TOKEN_PATH"] and address.startswith("127.0.0.1:"), out[-3000:]
        assert "keeping the grid alive: 2 cells loaded and idle" in out
        second = tmp_path / "second.json"
        # the printed line is all another process needs: no other RAY_AUTH_* and no ~/.ray/auth_token to fall back on
        env = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}
        env.update(HOME=str(tmp_path), RAY_AUTH_TOKEN_PATH=token_path)
        r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--attach", "--address", address,
                            "--namespace", namespace, "--samples", "6", "--json", str(second)],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "outputs equal reference: 6/6 samples bit-exact" in r.stdout
        pids = [{c["cell"]: c["pid"] for c in json.loads(f.read_text())["cells"]} for f in (first, second)]
        assert pids[0] == pids[1] and len(pids[0]) == 2        # the same cell processes served both runs
        assert json.loads(second.read_text())["samples"] == 6
    finally:
        run.stop(signal.SIGINT)
        run.kill_all()
    assert run.returncode == 130, run.stderr[-3000:]     # Ctrl-C (or SIGTERM) ends it: 130, like every command
    assert run.lines("interrupted: stopped the kept-alive grid (2 cells)"), run.stderr[-3000:]
    assert not run.leftovers(), "the kept-alive run left Ray processes behind"
