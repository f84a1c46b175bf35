"""Ray-free parts of the runtime: the retry helper, the tunables, start-up accounting, the report."""
import json
import threading
import time

import pytest
import torch

from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.runtime_config import DeviceProfile
from conftest import make_plan
from bidl_runtime.driver.report import RunReport
from bidl_runtime.retry import Expired, attempt, patiently
from bidl_runtime.driver.startup import StartupClock
from conftest import tiny_dvsmnist


def test_patiently_retries_timeouts_checks_between_and_gives_up():
    calls, checks = [], []

    def op(t):
        calls.append(t)
        if len(calls) < 3:
            raise Expired
        return "done"
    assert patiently(op, poll_s=0.01, check=lambda: checks.append(1)) == "done"
    assert calls == [0.01] * 3 and len(checks) == 2

    def never(t):
        raise Expired
    with pytest.raises(RuntimeError, match="waited 0.03"):
        patiently(never, poll_s=0.01, limit_s=0.03, give_up=lambda s: RuntimeError(f"waited {s:.2f}"))
    with pytest.raises(TimeoutError):
        patiently(never, poll_s=0.01, limit_s=0.02)

    class Stop(Exception):
        pass

    def stop():
        raise Stop
    with pytest.raises(Stop):                   # check() ends the wait by raising
        patiently(never, poll_s=0.01, check=stop)
    with pytest.raises(ValueError):             # anything but a timeout goes straight through
        patiently(lambda t: int("x"), poll_s=0.01)


def test_attempt_adapts_boolean_waits():
    ev = threading.Event()
    threading.Timer(0.05, ev.set).start()
    t0 = time.perf_counter()
    assert patiently(lambda t: attempt(ev.wait(t)), poll_s=0.01) is True
    assert time.perf_counter() - t0 >= 0.04
    with pytest.raises(Expired):
        attempt(False)


def test_runtime_config_is_the_one_place_for_tunables():
    cfg = RuntimeConfig(depth=3, poll_s=0.1, faults={(0, 1, 0): ("exit", 2)}, profile=DeviceProfile(ref_fps=10.0))
    assert RuntimeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    ch = cfg.channel("tcp")
    assert (ch.transport, ch.depth, ch.send_timeout_s, ch.recv_timeout_s) == ("tcp", 3, 0.1, 0.1)
    for bad, match in ((dict(backend="tpu"), "--backend 'tpu'"), (dict(transport="udp"), "--transport 'udp'"),
                       (dict(depth=0), "depth=0"), (dict(poll_s=0), "poll_s=0"),
                       (dict(idle_timeout_s=float("inf")), "idle_timeout_s=inf"), (dict(max_inflight=0), "max_inflight")):
        with pytest.raises(ValueError, match=match):
            RuntimeConfig(**bad)
    with pytest.raises(ValueError, match="RuntimeConfig: unknown"):
        RuntimeConfig.from_dict({"pol_s": 1})
    import dataclasses

    from bidl_runtime.cell.cell import CellSpec
    assert not any(f.name.endswith("_s") for f in dataclasses.fields(CellSpec))   # no re-declared tunables


def test_startup_clock_phases_and_cells():
    clock = StartupClock(t0=100.0)
    clock.mark("ray_start", 101.0, 104.0)
    clock.mark("cells", 104.0, 107.5)
    clock.mark("wire", 107.5, 108.0)
    clock.cell_ready("a", {"imports_s": 1.0, "load_s": 0.1})
    clock.cell_ready("b", {"imports_s": 2.0, "load_s": 0.3})
    d = clock.as_dict()
    assert d["ray_start_s"] == 3.0 and d["ray_start_at"] == 1.0 and d["total_s"] == 8.0 and d["grid_s"] == 4.0
    assert d["cells"]["imports_s"] == {"median": 1.5, "max": 2.0} and d["per_cell"]["b"]["load_s"] == 0.3
    with clock.phase("model"):
        time.sleep(0.01)
    assert clock.seconds("model") >= 0.01


def test_report_figures_and_json():
    plan = make_plan(tiny_dvsmnist(10), (2, 1))
    outputs = {i: torch.full((1, 10), float(i)) for i in range(3)}
    outputs[0][0, 0], outputs[1][0, 7], outputs[2][0, 3] = 50.0, 99.0, 50.0   # no ties: hit, hit, miss
    rep = RunReport(plan, "cpu", "auto", outputs, {0: 0, 1: 7, 2: 9}, {3: "sample 3: bad"},
                    fed_at={0: 0.0, 1: 0.1, 2: 0.2}, done_at={0: 1.0, 1: 1.5, 2: 2.0}, wall_s=2.5, cells=[],
                    driver_channels={}, startup={"grid_s": 4.0, "total_s": 9.0})
    assert rep.samples == 3 and rep.steady_samples == 2 and rep.steady_s == 1.0 and rep.samples_per_s == 2.0
    assert rep.frames_per_s == 20.0 and rep.latencies_s == {0: 1.0, 1: 1.4, 2: 1.8}
    assert rep.latency_ms(0.5) == pytest.approx(1400.0) and rep.window(1) == (2, 1.0)
    assert rep.accuracy == pytest.approx(2 / 3) and rep.startup_s == 4.0
    with pytest.raises(AttributeError):
        rep.wall_s = 1.0                                   # built once
    doc = json.loads(json.dumps(rep.to_json()))
    assert doc["grid"] == [2, 1] and doc["samples"] == 3 and doc["rejected"] == {"3": "sample 3: bad"}
    assert doc["outputs"]["1"][7] == 99.0 and doc["startup"]["total_s"] == 9.0
    text = rep.summary()
    assert "grid start-up 4.0 s" in text and "9.0 s from the command's start" in text and "rejected sample 3" in text
