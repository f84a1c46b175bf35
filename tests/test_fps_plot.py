"""benchmarks/fps_scaling.py's plot, from the committed results JSON (no measuring): what each panel
draws (ideal line, efficiencies, the published curve only over the measured range) and ``--replot``."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fps_scaling.json"


@pytest.fixture(scope="module")
def fps():
    spec = importlib.util.spec_from_file_location("fps_scaling_bench", ROOT / "benchmarks" / "fps_scaling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _doc(devices=(1, 2, 4), published_upto=24):
    """A small results document: T=48, time-only runs at ``devices`` at 90% efficiency past 1."""
    base = 30.0
    results = [{"T": 48, "devices": n, "mode": "time", "frames_per_s": base * n * (1 if n == 1 else 0.9),
                "efficiency": 1 if n == 1 else 0.9} for n in devices]
    pub = {"time_T48": {str(n): 28.0 * n * 0.8 for n in (1, 2, 3, 4, 8, published_upto)},
           "time_T240": {"1": 28.8, "24": 636.0}, "time2seg_T48": {"2": 60.0, "24": 681.0}}
    pub["time_T48"]["1"] = 28.0
    return {"results": results, "baseline_frames_per_s": {"48": base}, "published": pub, "model": "m",
            "backend": "emulated", "machine": {"cpus": 2}}


def test_series_published_only_over_the_measured_range(fps):
    s = fps.plot_series(_doc(), 48)
    assert s["devices"] == [1, 2, 4]
    dev, vals, eff = s["published"]["time"]
    assert dev == [1, 2, 3, 4]                              # 8 and 24 were not measured here
    assert vals[1] == pytest.approx(28.0 * 2 * 0.8)
    assert eff == pytest.approx([1.0, 0.8, 0.8, 0.8])       # against the published 1-device figure
    assert s["published"]["time2seg"][0] == [2]
    assert "time_T240" not in s["published"]                # another T's curve is not drawn


def test_series_ideal_and_ours(fps):
    s = fps.plot_series(_doc(), 48)
    assert s["ideal"] == ([1, 2, 4], [30.0, 60.0, 120.0])
    dev, vals, eff = s["ours"]["time"]
    assert dev == [1, 2, 4] and eff == [1, 0.9, 0.9] and vals[2] == pytest.approx(108.0)
    assert set(s["ours"]) == {"time"}


def test_series_of_the_committed_results(fps):
    doc = json.loads(RESULTS.read_text())
    for T in (48, 240):
        s = fps.plot_series(doc, T)
        lo, hi = s["devices"][0], s["devices"][-1]
        for dev, _, _ in s["published"].values():
            assert lo <= min(dev) and max(dev) <= hi
        for mode, (dev, vals, eff) in s["ours"].items():
            base = doc["baseline_frames_per_s"][str(T)]
            assert eff == pytest.approx([v / (n * base) for n, v in zip(dev, vals)]), mode


def test_plot_axes(fps, tmp_path, monkeypatch):
    """Two panels per T: frames/s on log2 axes with the ideal line drawn on top, efficiency below with
    the 100% line; x ticks at the measured device counts."""
    import matplotlib.pyplot as plt
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig: figs.append(fig))
    fps.plot(_doc(), tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    top, bottom = figs[0].axes
    assert top.get_xscale() == "log" and top.get_yscale() == "log" and bottom.get_xscale() == "log"
    assert list(top.get_xticks()) == [1, 2, 4]
    ideal = [ln for ln in top.get_lines() if ln.get_label().startswith("ideal")]
    assert len(ideal) == 1 and ideal[0].get_zorder() > max(ln.get_zorder() for ln in top.get_lines()
                                                            if ln is not ideal[0])
    assert list(ideal[0].get_ydata()) == [30.0, 60.0, 120.0]
    assert any(list(ln.get_ydata()) == [100, 100] for ln in bottom.get_lines())      # the 100% line
    assert [90.0, 90.0] == [y for ln in bottom.get_lines() for y in ln.get_ydata()
                            if ln.get_marker() == "o" and ln.get_linestyle() == "-"][1:]
    lo, hi = bottom.get_ylim()
    assert lo <= 80 - 0.1 and hi >= 100                    # the published 80% is inside the panel


def test_replot_from_json(tmp_path):
    shutil.copy(RESULTS, tmp_path / "fps_scaling.json")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fps_scaling.py"), "--replot",
                        str(tmp_path / "fps_scaling.json")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "fps_scaling.png").stat().st_size > 30_000
    assert "wrote" in r.stdout and sorted(p.name for p in tmp_path.iterdir()) == ["fps_scaling.json",
                                                                                   "fps_scaling.png"]


@pytest.mark.parametrize("content, want", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ('{"results": []}', "not an fps_scaling results file (missing baseline_frames_per_s, model, backend, machine)"),
    ("[1, 2]", "not an fps_scaling results file (missing results,"),
])
def test_replot_bad_file_is_one_error_line(fps, tmp_path, capsys, content, want):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    assert fps.main(["--replot", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --replot {str(path)!r}: ") and want in err
    assert not (tmp_path / "r.png").exists()
