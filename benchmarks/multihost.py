"""A grid across hosts against the same grid on one host, in the same run; then a host killed mid-run.

    sudo python benchmarks/multihost.py [--samples 240] [--kill-samples 420] [--kill-after 8] [--out DIR]
    sudo python benchmarks/multihost.py --smoke        # small sizes: checks the path, measures nothing

Three hosts of the multi-host test bed (tests/cluster/testbed.py: network namespaces joined by a bridge,
each with its own address, Ray node with token auth, HOME, artifact key and store; the driver on host 1
with ``--address``), the emulated backend (no compute: ResNetLif50's real 2x128x128 shapes at T=48, the
12.55 MB state per sample included, paced at the published chip's 28.8 frames/s), grid 12x2:

1. **one host**: the 24 cells on host 1 (``--hosts H1=24``);
2. **three hosts**: the same grid over ``--hosts H1=8,H2=8,H3=8`` (the planner keeps each column's
   state within a host where it can and puts the crossings on activations), standby devices
   ``--standby H1=4,H2=4`` declared;
3. **a host killed**: run 2 again, and ``kill_host`` (SIGKILL of every process of the host: raylet, workers,
   cells) of the host holding the most cells but the driver's, ``--kill-after`` seconds into streaming.

Printed and written to ``<out>/multihost.json`` and ``multihost.txt``: frames/s of both grids and their
ratio (steady state: first result to last), bytes crossing hosts per sample (the plan's, and measured on
the tcp edges), kill -> detected and kill -> streaming again (the driver's result flow resumed), samples
lost and duplicated, and whether every output equals the one-host run's. Targets on this machine: the
three-host grid >= 95% of the one-host one; streaming again within 15 s, nothing lost or duplicated.
(Emulated cells move real bytes but compute nothing; bit-exactness with real compute across a host loss
is what ``tests/test_multihost.py`` checks.) Needs root (namespaces); exits 2 naming why otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from cluster.testbed import BidlRun, TestBed, unavailable  # noqa: E402

MODEL = ["--config", "resnetlif50-itout-b8x1-cifar10dvs", "--backend", "emulated", "--no-verify"]


def figures(run: BidlRun, name: str, n: int) -> dict[str, Any]:
    """What one run measured (RuntimeError with its output's tail when it failed)."""
    if run.rc != 0 or run.report is None:
        raise RuntimeError(f"{name}: bidl-run exited {run.rc}:\n{run.out[-3000:]}")
    rep = run.report
    planned = re.search(r"across hosts: (\d+) edge\(s\), ([\d,]+) bytes per sample", run.out)
    tcp_bytes = sum(e["bytes"] for e in rep["edges"] if e["transport"] == "tcp")
    got = sorted(int(i) for i in rep["outputs"])
    return {"run": name, "frames_per_s": rep["frames_per_s"], "samples_per_s": rep["samples_per_s"],
            "samples": rep["samples"], "wall_s": rep["wall_s"], "startup_s": rep["startup_s"],
            "cross_host_edges": int(planned.group(1)) if planned else 0,
            "cross_host_bytes_per_sample_plan": int(planned.group(2).replace(",", "")) if planned else 0,
            "cross_host_bytes_per_sample_measured": round(tcp_bytes / max(1, rep["samples"])),
            "lost": n - len(got) - len(rep["rejected"]), "duplicated": rep.get("duplicated", 0),
            "restarts": rep["restarts"], "outputs": rep["outputs"]}


def busiest_other_host(run: BidlRun, driver: str) -> str:
    """The host holding the most cells in a run's plan (its ``hosts:`` line), the driver's excepted."""
    line = re.search(r"^hosts: (.*); driver on", run.out, re.M)
    counts = {h: int(n) for h, n in re.findall(r"([\d.]+) (\d+) cell\(s\)", line.group(1))} if line else {}
    counts.pop(driver, None)
    return max(counts, key=lambda h: (counts[h], h)) if counts else ""


def spares_text(spares: Optional[dict]) -> str:
    """`` (standby cells ready then: 3/8)``: spares still starting their process make a recovery slower."""
    if not spares or not spares.get("used"):
        return ""
    return f" (standby cells ready then: {spares['ready']}/{spares['used']})"


def table(res: dict[str, Any]) -> str:
    one, three, kill = res["one_host"], res["three_hosts"], res.get("host_killed")
    lines = [f"multihost {res['date']} on {res['machine']}: emulated ResNetLif50 2x128x128 T={res['T']}, grid "
             f"{res['grid']}, hosts = network namespaces (test bed), driver on host 1",
             f"{'run':<22}{'frames/s':>10}{'samples/s':>11}{'MB across hosts/sample (plan / tcp)':>38}",
             "-" * 81]
    for r in (one, three):
        lines.append(f"{r['run']:<22}{r['frames_per_s']:>10.1f}{r['samples_per_s']:>11.2f}"
                     f"{r['cross_host_bytes_per_sample_plan'] / 1e6:>27.2f} / {r['cross_host_bytes_per_sample_measured'] / 1e6:.2f}")
    lines.append(f"three hosts / one host: {res['ratio']:.1%} (target >= 95%: {'met' if res['ratio'] >= 0.95 else 'NOT met'})")
    if kill:
        lines.append(
            f"host killed: {kill['host']} ({kill['cells_moved']} cells) {kill['killed_after_s']:.1f} s into streaming"
            f"{spares_text(kill.get('spares_ready_at_kill'))}; "
            f"detected after {kill['detected_after_kill_s']:.1f} s, streaming again after "
            f"{kill['streaming_again_after_kill_s']:.1f} s (target <= 15 s: "
            f"{'met' if kill['streaming_again_after_kill_s'] <= 15 else 'NOT met'}); samples lost {kill['lost']}, "
            f"duplicated {kill['duplicated']}, replayed {kill['replayed']}; outputs equal to the one-host run's: "
            f"{kill['outputs_equal']}/{kill['samples']}; {kill['frames_per_s']:.1f} frames/s over the whole run")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=240, help="samples per throughput run (default %(default)s)")
    ap.add_argument("--kill-samples", type=int, default=420, help="samples of the run a host dies in")
    ap.add_argument("--kill-after", type=float, default=8.0, help="seconds into streaming the host dies")
    ap.add_argument("--out", default=str(HERE / "results"), help="where multihost.json / .txt go")
    ap.add_argument("--smoke", action="store_true", help="T=8, 4x2, few samples: the path, not a measurement")
    args = ap.parse_args(argv)
    why = unavailable()
    if why:
        print(f"error: the multi-host test bed cannot be made here: {why}", file=sys.stderr)
        return 2
    T, rows, per = (8, 4, 3) if args.smoke else (48, 12, 8)
    cells = rows * 2
    samples, kill_samples = (12, 60) if args.smoke else (args.samples, args.kill_samples)
    grid = ["--grid", f"{rows}x2", "--cfg-options", f"model.backbone.timestep={T}"]
    t_start = time.time()
    with TestBed(hosts=3, devices=[cells, per + per // 2, per + per // 2], cpus=1) as bed:
        h = [bed.ip(i) for i in (1, 2, 3)]
        spread = ["--hosts", f"{h[0]}={per},{h[1]}={per},{h[2]}={per}",
                  "--standby", f"{h[0]}={per // 2},{h[1]}={per // 2},{h[2]}={per // 2}"]
        print(f"test bed up: 3 hosts {', '.join(h)} ({time.time() - t_start:.0f} s)", flush=True)
        one = bed.bidl_run([*MODEL, *grid, "--hosts", f"{h[0]}={cells}", "--samples", str(samples)], timeout=1200)
        one_f = figures(one, "one host", samples)
        print(f"one host: {one_f['frames_per_s']:.1f} frames/s", flush=True)
        three = bed.bidl_run([*MODEL, *grid, *spread, "--samples", str(samples)], timeout=1200)
        three_f = figures(three, "three hosts", samples)
        print(f"three hosts: {three_f['frames_per_s']:.1f} frames/s", flush=True)
        victim = busiest_other_host(three, h[0])
        i_victim = h.index(victim) + 1
        killed = bed.bidl_run([*MODEL, *grid, *spread, "--samples", str(kill_samples)], delay=args.kill_after,
                              action=lambda b: b.kill_host(i_victim), timeout=1200)
        kill_f = figures(killed, "host killed", kill_samples)
    heal = next((r for r in kill_f["restarts"] if r.get("host") == victim), None)
    if heal is None or heal.get("streaming_again_s") is None:
        raise RuntimeError(f"the killed host {victim} was not healed:\n{killed.out[-3000:]}")
    ref = one_f["outputs"]
    equal = sum(1 for i, y in kill_f["outputs"].items() if ref.get(i, ref.get("0")) == y)
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": f"{platform.node()} "
        f"({os.cpu_count()} cpus)", "model": "resnetlif50 2x128x128 (emulated, 28.8 frames/s per device)",
        "T": T, "grid": f"{rows}x2", "smoke": args.smoke,
        "one_host": {k: v for k, v in one_f.items() if k not in ("outputs", "restarts")},
        "three_hosts": {k: v for k, v in three_f.items() if k not in ("outputs", "restarts")},
        "ratio": three_f["frames_per_s"] / one_f["frames_per_s"],
        "host_killed": {
            "host": victim, "cells_moved": len(heal["cells"]), "killed_after_s": args.kill_after,
            "detected_after_kill_s": round(heal["detected_wall"] - killed.acted_at, 3),
            "streaming_again_after_kill_s": round(heal["detected_wall"] + heal["streaming_again_s"] - killed.acted_at, 3),
            "rewired_after_detection_s": heal["rewired_s"], "timeline_after_detection_s": heal["timeline_s"],
            "moved": {c["cell"]: f"{c['moved_to']} on {c['host_now']}" for c in heal["cells"]},
            "spares_ready_at_kill": heal.get("spares"),
            "replayed": len(heal["replayed"]), "samples": kill_f["samples"], "lost": kill_f["lost"],
            "duplicated": kill_f["duplicated"], "outputs_equal": equal, "frames_per_s": kill_f["frames_per_s"]},
        "wall_s": round(time.time() - t_start, 1),
    }
    text = table(res)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "multihost_smoke" if args.smoke else "multihost"
    (out / f"{name}.json").write_text(json.dumps(res, indent=1))
    (out / f"{name}.txt").write_text(text + "\n")
    print(f"written: {out / f'{name}.json'}, {out / f'{name}.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
