"""A visible runtime: the cells' Ray metrics (names and labels as scraped from the node's metrics
export port), the shipped Grafana dashboard, the Chrome trace and PNG timeline of a run, the run
JSON's start-up time and percent accuracy, and quiet cached compiles."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from bidl_runtime.cell import metrics as bm
from bidl_runtime.cell import spans
from bidl_runtime.driver import trace as bt
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.plan.grid_plan import cell_name
from bidl_runtime.driver.report import RunReport
from conftest import SMALL, glyph_samples, template_workers, tiny_dvsmnist, tiny_glyphs

N = 6            # samples per run
T = 6
GRID = (2, 2)


# ------------------------------------------------------------------------------ no Ray

def test_dashboard_is_shipped_current_and_uses_only_exported_names():
    shipped = json.loads(bm.DASHBOARD.read_text())
    assert shipped == bm.dashboard(), "regenerate with: python -m bidl_runtime.cell.metrics --write-dashboard"
    used = bm.dashboard_metric_names(shipped)
    assert used and used <= bm.exported_series(), used - bm.exported_series()
    titles = " | ".join(p["title"] for p in shipped["panels"])
    for what in ("Frames/s per cell", "Chunk ms", "Bytes sent", "Queue depth", "Busy %"):
        assert what in titles
    for p in shipped["panels"]:
        assert p["targets"][0]["expr"].count("(") == p["targets"][0]["expr"].count(")")
    assert {v["name"] for v in shipped["templating"]["list"]} >= {"datasource", "config", "replica"}


def test_exported_names_follow_rays_rules():
    names = {m.name: m.exported for m in bm.METRICS}
    assert names["bidl_cell_frames"] == "ray_bidl_cell_frames_total"          # counter: ray_ + _total
    assert names["bidl_cell_queue_depth"] == "ray_bidl_cell_queue_depth"      # gauge: ray_ only
    assert set(bm.METRICS[5].series) == {f"ray_bidl_cell_chunk_ms_{s}" for s in ("bucket", "sum", "count")}
    assert bm.LABELS == ("cell", "replica", "row", "col", "device", "config")


def test_docs_name_the_exported_metrics_and_labels():
    readme = (Path(__file__).parents[1] / "docs" / "observability.md").read_text()
    for m in bm.METRICS:
        assert f"`{m.exported}" in readme, m.exported
    for label in bm.LABELS:
        assert f"`{label}`" in readme, label
    assert "(`bidl_cell_frames`" not in readme and "bidl_runtime/grafana/bidl_grid.json" in readme


def test_parse_prometheus_text():
    text = ('# HELP ray_bidl_cell_frames_total x\n# TYPE ray_bidl_cell_frames_total counter\n'
            'ray_bidl_cell_frames_total{Component="core_worker",cell="cell[0,1]@dev1",col="1",config="a",'
            'le="1.0",row="0"} 42.0\nray_other 1.0\nray_bidl_cell_queue_depth 3\n')
    got = bm.parse_prometheus(text)
    assert got[0] == ("ray_bidl_cell_frames_total", {"Component": "core_worker", "cell": "cell[0,1]@dev1", "col": "1",
                                                     "config": "a", "le": "1.0", "row": "0"}, 42.0)
    assert got[1] == ("ray_bidl_cell_queue_depth", {}, 3.0) and len(got) == 2


def test_install_dashboard_copies_into_rays_folder(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        bm.install_dashboard(tmp_path / "absent")
    monkeypatch.setenv("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR", str(tmp_path))
    out = bm.install_dashboard()
    assert out == tmp_path / "bidl_grid.json" and json.loads(out.read_text())["uid"] == bm.DASHBOARD_UID


def test_metrics_cli_lists_the_exported_names(capsys):
    assert bm.main([]) == 0
    out = capsys.readouterr().out
    assert "labels: cell, replica, row, col, device, config" in out
    for m in bm.METRICS:
        assert m.exported in out
    assert bm.main(["--install-dashboard", "/nonexistent/dir"]) == 2


def test_trace_events_must_be_positive():
    with pytest.raises(ValueError, match="trace_events=0: expected a positive int"):
        RuntimeConfig(trace_events=0)


def test_trace_buffer_keeps_the_first_quarter_and_the_latest():
    buf = spans.TraceBuffer(8)
    for i in range(20):
        buf.add(spans.LOOP, "compute", i, i + 0.5, i)
    out = buf.export("node")
    assert [s[4] for s in out["spans"]] == [0, 1] + list(range(14, 20)) and out["dropped"] == 12
    assert len(buf.head) + len(buf.ring) == 8                              # bounded, however long the run
    off = out["spans"][0][2] - 0                                           # perf_counter s -> monotonic ns
    assert out["spans"][1][2] - off == pytest.approx(1e9, abs=1) and out["spans"][1][3] - out["spans"][1][2] == 5e8


def test_report_json_has_startup_and_percent_accuracy():
    from conftest import make_plan
    plan = make_plan(tiny_dvsmnist(10), (2, 1))
    outputs = {i: torch.arange(10.0).flip(0).reshape(1, 10) for i in range(3)}   # class 0 first, class 5 in top-5
    rep = RunReport(plan, "cpu", "auto", outputs, {0: 0, 1: 4, 2: 7}, {}, fed_at={0: 0.0, 1: 0.1, 2: 0.2},
                    done_at={0: 1.0, 1: 1.5, 2: 2.0}, wall_s=2.5, cells=[], driver_channels={},
                    startup={"grid_s": 4.0, "total_s": 9.5})
    doc = json.loads(json.dumps(rep.to_json()))
    assert doc["accuracy_top-1"] == pytest.approx(100 / 3) and doc["accuracy_top-5"] == pytest.approx(200 / 3)
    assert "accuracy" not in doc and doc["startup_s"] == 9.5 and doc["grid_startup_s"] == 4.0
    assert rep.accuracy == pytest.approx(1 / 3)
    assert "accuracy_top-1 33.33%  accuracy_top-5 66.67%" in rep.summary()


def test_cached_compile_prints_one_line(tmp_path, capsys):
    from compile import compile_config
    cfg = tiny_glyphs(4)
    first = compile_config(cfg, grid="1x1", out=tmp_path, progress=False, verify_chunks=1)
    fresh = capsys.readouterr().out
    assert "segment  split" in fresh and "miss" in fresh and not first.all_cached   # a build shows its table
    again = compile_config(cfg, grid="1x1", out=tmp_path, progress=False)
    cached = capsys.readouterr().out
    assert again.all_cached and cached.count("\n") == 1, cached
    assert "1 artifact(s) reused from the cache" in cached and "segment  split" not in cached


# ------------------------------------------------------------------------------ on Ray

STARTS_RAY = ('runs',)   # conftest marks the tests that use it slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2x2 grid (emulated backend: no compile), run twice on the same cells: untraced, then
    traced; Ray's metrics reported every 0.5 s."""
    import ray

    from bidl_runtime.api import GridJob
    from bidl_runtime.cluster.ray_cluster import start_local
    from bidl_runtime.driver.grid import Grid
    tmp = tmp_path_factory.mktemp("obs")
    with template_workers():
        start_local(num_cpus=2, resources={"bidl_device": 8}, include_dashboard=False, log_to_driver=False,
                    logging_level="WARNING", namespace="test-obs", _system_config={"metrics_report_interval_ms": 500})
    try:
        cfg = tiny_glyphs(T)
        rcfg = RuntimeConfig(backend="emulated")
        plan = GridJob(cfg, grid=GRID, runtime=rcfg, artifacts=tmp).plan()
        with Grid(plan, rcfg) as grid:
            plain = grid.run(glyph_samples(T, N), progress=False)
            traced = grid.run(glyph_samples(T, N, seed=1), progress=False, trace=tmp / "run.json")
        yield {"plain": plain, "traced": traced, "tmp": tmp, "plan": plan}
    finally:
        ray.shutdown()


def test_untraced_run_carries_no_trace(runs):
    assert runs["plain"].trace is None and all("trace" not in c for c in runs["plain"].cells)
    assert all("trace" not in c for c in runs["traced"].cells)           # the spans go to the file only


def test_trace_is_chrome_format_with_one_track_per_cell(runs):
    info = runs["traced"].trace
    doc = json.loads(Path(info["json"]).read_text())
    assert isinstance(doc["traceEvents"], list) and doc["displayTimeUnit"] == "ms"
    for e in doc["traceEvents"]:
        assert e["ph"] in ("X", "M", "i", "b", "e") and isinstance(e["pid"], int) and isinstance(e["name"], str)
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["tid"], int)
    timed = [e for e in doc["traceEvents"] if e["ph"] != "M"]
    assert [e["ts"] for e in timed] == sorted(e["ts"] for e in timed)
    plan = runs["plan"]
    tracks = bt.spans_of(doc)
    assert set(tracks) == {"driver"} | {c.name for c in plan.cells}          # one track per cell + the driver
    for c in plan.cells:
        names = {e["name"] for e in tracks[c.name]}
        assert {"wait input", "compute"} <= names and any(n.startswith("send ") for n in names)
        assert ("wait state" in names) == (c.row > 0)
        for tid in (bt.LOOP, bt.OUTBOX):                                    # each thread's spans never overlap
            xs = sorted((e for e in tracks[c.name] if e["tid"] == tid), key=lambda e: e["ts"])
            assert all(b["ts"] >= a["ts"] + a["dur"] - 0.01 for a, b in zip(xs, xs[1:]))
        computes = [e for e in tracks[c.name] if e["name"] == "compute"]
        assert sorted(e["args"]["sample"] for e in computes) == list(range(N))     # one per sample, each once
        for e in tracks[c.name]:
            assert (e["args"]["replica"], e["args"]["row"], e["args"]["col"]) == (c.replica, c.row, c.col), e
        sends = {(e["name"], e["args"]["sample"]) for e in tracks[c.name] if e["name"].startswith("send ")}
        kinds = {f"send {e.kind}" for e in plan.outputs(c.key)}
        assert sends == {(k, i) for k in kinds for i in range(N)}                 # every output edge, every sample
    feeds = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "feed"]
    assert sorted(e["args"]["sample"] for e in feeds) == list(range(N))
    assert info["events"] == len(timed) and info["dropped"] == 0


def test_trace_respects_the_grids_dependencies(runs):
    doc = json.loads(Path(runs["traced"].trace["json"]).read_text())
    plan, tracks = runs["plan"], bt.spans_of(doc)
    comp = {(c.row, c.col): {e["args"]["sample"]: e for e in tracks[c.name] if e["name"] == "compute"}
            for c in plan.cells}
    feed = {e["args"]["sample"]: e["ts"] for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "feed"}
    result = {e["args"]["sample"]: e for e in tracks["driver"] if e["name"] == "result"}
    eps = 0.01   # microseconds: rounding of ts and dur to nanoseconds
    end = lambda e: e["ts"] + e["dur"]  # noqa: E731
    for i in range(N):
        for (g, s), by_sample in comp.items():
            c = by_sample[i]
            assert c["ts"] >= feed[i] - eps
            if g > 0:
                assert c["ts"] >= end(comp[(g - 1, s)][i]) - eps, f"({g},{s}) computed {i} before ({g - 1},{s})"
            if s > 0:
                assert c["ts"] >= end(comp[(g, s - 1)][i]) - eps, f"({g},{s}) computed {i} before ({g},{s - 1})"
        last = comp[(plan.rows - 1, plan.cols - 1)][i]
        assert end(result[i]) >= end(last) - eps


def test_trace_png_timeline(runs):
    png = Path(runs["traced"].trace["png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cell_metrics_are_exported_with_their_labels(runs):
    """Scrape the node's metrics export port until both runs' frames are counted for every cell."""
    plan = runs["plan"]
    want = {c.name: {"replica": str(c.replica), "row": str(c.row), "col": str(c.col), "device": str(c.device),
                     "config": plan.config} for c in plan.cells}
    frames = {c.name: 2 * N * plan.slices[c.row] for c in plan.cells}
    deadline, got = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        got = [s for url in bm.metrics_endpoints()
               for s in bm.parse_prometheus(urllib.request.urlopen(url, timeout=10).read().decode())]
        counted = {lab.get("cell"): v for name, lab, v in got if name == "ray_bidl_cell_frames_total"}
        if counted == frames:
            break
        time.sleep(0.5)
    counted = {lab.get("cell"): v for name, lab, v in got if name == "ray_bidl_cell_frames_total"}
    assert counted == frames
    names = {name for name, _, _ in got}
    assert names == bm.exported_series(), names ^ bm.exported_series()
    assert bm.dashboard_metric_names(json.loads(bm.DASHBOARD.read_text())) <= names
    for name, lab, v in got:
        assert set(bm.LABELS) <= set(lab), (name, lab)
        assert {k: lab[k] for k in want[lab["cell"]]} == want[lab["cell"]], (name, lab)
    samples = {lab["cell"]: v for name, lab, v in got if name == "ray_bidl_cell_samples_total"}
    assert samples == {c.name: 2 * N for c in plan.cells}
    sent = {lab["cell"]: v for name, lab, v in got if name == "ray_bidl_cell_bytes_sent_total"}
    by_stats = {c.name: 0 for c in plan.cells}                  # both runs' channel stats, per sending cell
    for rep in (runs["plain"], runs["traced"]):
        for c in rep.cells:
            by_stats[c["cell"]] += sum(ch["bytes"] for ch in c["channels_out"].values())
    assert sent == by_stats and all(v > 0 for v in sent.values())
    chunks = {lab["cell"]: v for name, lab, v in got if name == "ray_bidl_cell_chunk_ms_count"}
    assert chunks == {c.name: 2 * N for c in plan.cells}


# ------------------------------------------------------------------------------ the CLI

@pytest.mark.slow
def test_cli_trace_json_and_quiet_cached_compile(tmp_path):
    """``--trace`` and ``--json`` of the run command, with its artifacts already in the cache: one
    compile line, no table."""
    from bidl_models.config import load_config
    from bidl_runtime.api import GridJob
    opts = SMALL + ["model.backbone.timestep=4"]
    cfg = load_config("clif3fc3dm_itout-b16x1-dvsmnist", opts)
    GridJob(cfg, grid="2x1", artifacts=tmp_path / "arts").artifacts()
    r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--config", "clif3fc3dm_itout-b16x1-dvsmnist",
                        "--cfg-options", *opts, "--grid", "2x1", "--samples", "4", "--artifacts", str(tmp_path / "arts"),
                        "--trace", str(tmp_path / "t.json"), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "artifact(s) reused from the cache" in r.stdout and "segment  split" not in r.stdout, r.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["startup_s"] > doc["grid_startup_s"] > 0 and doc["startup"]["total_s"] == doc["startup_s"]
    assert doc["trace"]["json"] == str(tmp_path / "t.json") and (tmp_path / "t.png").is_file()
    tracks = bt.spans_of(json.loads((tmp_path / "t.json").read_text()))
    assert set(tracks) == {"driver", cell_name(0, 0, 0, 0), cell_name(0, 1, 0, 1)}
    assert "trace: " in r.stdout and "ui.perfetto.dev" in r.stdout
