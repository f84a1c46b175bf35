"""The README's main command on this machine, its planning errors, and a fault drill: clear
messages, the right exit codes, and no Ray processes left behind."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = dict(os.environ, PYTHONUNBUFFERED="1")   # token auth as set up by conftest (RAY_AUTH_TOKEN_PATH)
pytestmark = pytest.mark.slow


def ray_processes() -> set[int]:
    """Ray's node processes under this session's Ray temp dir (others' clusters on a shared machine
    are not ours to count)."""
    import tempfile
    marker = os.path.join(os.environ.get("RAY_TMPDIR", tempfile.gettempdir()), "ray", "session")
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    pids = set()
    for p in out.split():
        try:
            if marker in Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.add(int(p))
        except OSError:
            pass
    return pids


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bidl_runtime.run", *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cli-artifacts"))


def test_main_command_outputs_equal_reference(artifacts):
    before = ray_processes()
    t0 = time.perf_counter()
    r = run_cli("--grid", "3x2", "--samples", "6", "--artifacts", artifacts)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "outputs equal reference: 6/6 samples bit-exact" in out
    for cell in ("cell[0,0]@dev0", "cell[2,1]@dev5"):
        assert cell in out
    assert "time-step frames/s" in out and "dashboard http" in out
    print(f"CLI 3x2 run: {time.perf_counter() - t0:.1f} s")
    time.sleep(1)
    assert ray_processes() <= before, "the run left Ray processes behind"


def test_planning_errors_fail_fast_without_ray():
    r = run_cli("--grid", "30x1")
    assert r.returncode == 2 and "rows <= T" in r.stderr
    r = run_cli("--grid", "3by2")
    assert r.returncode == 2 and "expected RxC" in r.stderr
    r = run_cli("--config", "resnetlif50-itout-b8x1-cifar10dvs_mp", "--grid", "1x3")
    assert r.returncode == 2 and "2 segment models" in r.stderr
    r = run_cli("--config", "no-such-config")
    assert r.returncode == 2 and "no-such-config" in r.stderr


def test_fault_drill_stops_naming_the_cell_and_cleans_up(artifacts):
    before = ray_processes()
    t0 = time.perf_counter()
    r = run_cli("--grid", "2x2", "--samples", "8", "--artifacts", artifacts, "--inject-fault", "1,0:exit:3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "cell[1,0]@dev2 failed: the actor died" in r.stderr
    assert time.perf_counter() - t0 < 300
    time.sleep(1)
    assert ray_processes() <= before, "the failed run left Ray processes behind"


def test_keep_alive_cells_stay_usable_from_another_process(artifacts, tmp_path):
    """--keep-alive: the cells stay up after the run; a second process attaches with the printed
    address and runs samples through the same cell processes; Ctrl-C ends it all."""
    before = ray_processes()
    first = tmp_path / "first.json"
    proc = subprocess.Popen([sys.executable, "-m", "bidl_runtime.run", "--grid", "2x1", "--samples", "4",
                             "--artifacts", artifacts, "--keep-alive", "--json", str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    lines = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("join with:"):
                break
        out = "".join(lines)
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
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest[-3000:]
    assert "stopping the kept-alive grid" in rest
    time.sleep(1)
    assert ray_processes() <= before, "the kept-alive run left Ray processes behind"
