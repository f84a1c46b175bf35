"""The chaos report: for every fault the time to name it and to stream again, and maxima over all
faults, whatever their kind (a frozen cell whose replacement took 126 s is the slowest recovery)."""
import sys
from pathlib import Path
from types import SimpleNamespace

from bidl_runtime.driver.chaos import Chaos

ROOT = Path(__file__).resolve().parents[1]


def restart(cell, kind, at):
    return {"cells": [{"cell": cell, "kind": kind}], "replayed": [1, 2], "detected_at": at[0],
            "rewired_at": at[1], "streaming_again_at": at[2]}


def test_the_summary_takes_the_maxima_over_all_faults():
    grid = SimpleNamespace(stream=SimpleNamespace(duplicated=0))
    chaos = Chaos(grid, faults=3, total=100)
    chaos.events = [{"kind": "kill", "cell": "cell[1,0]@dev2", "at": 10.0, "after_results": 20},
                    {"kind": "stop", "cell": "cell[0,1]@dev1", "at": 50.0, "after_results": 50},
                    {"kind": "kill", "cell": "cell[2,1]@dev5", "at": 300.0, "after_results": 90}]
    report = SimpleNamespace(restarts=[restart("cell[1,0]@dev2", "died", (10.5, 12.0, 13.3)),
                                       restart("cell[0,1]@dev1", "frozen", (55.2, 170.0, 176.0)),
                                       restart("cell[2,1]@dev5", "died", (300.4, 302.0, None))],
                             outputs={i: None for i in range(100)}, rejected={}, verify={"equal": 100},
                             replayed=6)
    s = chaos.summary(report, expected=100)
    assert [f.get("streaming_again_after_s") for f in s["faults"]] == [3.3, 126.0, None]
    assert [f["named_after_s"] for f in s["faults"]] == [0.5, 5.2, 0.4]
    assert s["max_streaming_again_s"] == {"s": 126.0, "kind": "stop", "cell": "cell[0,1]@dev1"}
    assert s["max_named_s"] == {"s": 5.2, "kind": "stop", "cell": "cell[0,1]@dev1"}
    assert s["not_streaming_again"] == ["kill cell[2,1]@dev5"]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from chaos import recover_line
    assert recover_line(s) == ("time to recover (max over all 3 faults): named 5.2 s (stop cell[0,1]@dev1), "
                               "streaming again 126.0 s (stop cell[0,1]@dev1); never streaming again: "
                               "kill cell[2,1]@dev5")
