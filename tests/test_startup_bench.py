"""benchmarks/startup.py in a reduced mode (2x1, the cpu backend: no Inductor build): the breakdown's schema,
figures from the runs' own timings."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_startup_breakdown(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--runs", "1", "--grid", "2x1",
                        "--samples", "4", "--out", str(tmp_path), "--extra=--backend cpu"], capture_output=True, text=True, timeout=900,
                       env=dict(os.environ))   # token auth as set up by conftest (RAY_AUTH_TOKEN_PATH)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "startup.txt").read_text().strip() in r.stdout
    d = json.loads((tmp_path / "startup.json").read_text())
    for key in ("benchmark", "date", "machine", "grid", "runs", "load_before", "load_after", "current"):
        assert key in d, key
    run = d["current"]["runs"][0]
    s = run["startup"]
    for phase in ("imports", "model", "ray_start", "artifacts", "place", "cells", "wire"):
        assert s[f"{phase}_s"] >= 0 and s[f"{phase}_at"] >= 0, phase
    # phases are measured, and fit together: the grid is ready when the wiring ends
    assert s["total_s"] == pytest.approx(s["wire_at"] + s["wire_s"], abs=0.01)
    assert s["grid_s"] == pytest.approx(s["wire_at"] + s["wire_s"] - s["cells_at"], abs=0.01)
    # the model is resolved while Ray starts, the artifacts checked after it, the cells after both
    assert s["model_at"] <= s["ray_start_at"] + 0.5 and s["artifacts_at"] >= s["model_at"] + s["model_s"] - 0.01
    assert s["cells_at"] >= max(s["ray_start_at"] + s["ray_start_s"], s["artifacts_at"] + s["artifacts_s"]) - 0.01
    assert set(s["per_cell"]) == {"cell[0,0]@dev0", "cell[1,0]@dev1"}
    for c in s["per_cell"].values():   # forked from the cell template: Ray's import only, no torch
        assert 0 < c["imports_s"] < s["total_s"] and 0 <= c["load_s"] < c["ready_at"] <= s["total_s"] + 0.01
        assert c["process_start_at"] > s["imports_s"], "a worker forked once Ray had started"
    assert run["command_wall_s"] > s["total_s"] and run["verify"]["equal"] == run["verify"]["compared"] == 4
    assert 0 < s["driver_cpu_s"] and 0 < max(c["cpu_s"] for c in s["per_cell"].values()) <= s["cells_cpu_sum_s"]
    summary = d["current"]["summary"]
    assert summary["total_s"]["median"] == s["total_s"] and summary["grid_s"]["median"] == s["grid_s"]
