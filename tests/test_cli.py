"""The README's main command on this machine, its planning errors, and a fault drill: clear
messages, the right exit codes, and no Ray processes left behind."""
import os
import subprocess
import sys
import time

import pytest

ENV = dict(os.environ, PYTHONUNBUFFERED="1")   # token auth as set up by conftest (RAY_AUTH_TOKEN_PATH)


def ray_processes() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


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
