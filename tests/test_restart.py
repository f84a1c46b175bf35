"""Restart and replay on a real (local) Ray cluster: a cell that dies, raises, freezes or gets stuck is
named, restarted and its replica's in-flight samples replayed; every output comes back once and
bit-exact; chaos (random SIGKILL / SIGSTOP) is survived; bad samples are rejected alone; a journal lets
a rerun skip what is done; verification keeps no inputs."""
import gc
import time
import weakref

import pytest
import ray
import torch

from bidl_runtime.api import GridJob, stream
from bidl_runtime.driver.chaos import Chaos
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.driver.grid import Grid, RunError
from bidl_runtime.driver.journal import Journal
from conftest import glyph_samples as samples
from conftest import tiny_glyphs as cfg

T = 7


@pytest.fixture(scope="module")
def cluster(ray_local):   # cluster.start_local: token auth, loopback
    yield


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts):   # the session's tiny-model artifacts (conftest): test_grid's 3x2, 2x2, 2x1
    return tiny_artifacts


def plan_of(artifacts, grid=(3, 2), replicas=1, transport="auto"):
    return GridJob(cfg(T), grid=grid, replicas=replicas, runtime=RuntimeConfig(transport=transport),
                   artifacts=artifacts).plan()


def run_grid(artifacts, items, grid=(3, 2), replicas=1, transport="auto", chaos=None, **rkw):
    g = Grid(plan_of(artifacts, grid, replicas, transport), RuntimeConfig(metrics=False, transport=transport, **rkw))
    try:
        monkey = chaos(g).start() if chaos else None
        report = g.run(items, progress=False, verify=True)
        if monkey is not None:
            monkey.stop()
        return report, g, monkey
    finally:
        g.close()


def assert_all_exact(report, n):
    assert report.verify == {"equal": n, "compared": n, "max_abs_diff": 0.0}
    assert list(report.outputs) == list(range(n)), "every sample once, in sample order"


def by_cell(report) -> dict[str, dict]:
    return {c["cell"]: dict(c, replayed=r["replayed"], rewired_s=r["rewired_s"]) for r in report.restarts
            for c in r["cells"]}


def test_dead_and_raising_cells_are_restarted_and_their_samples_replayed(cluster, artifacts):
    n = 40
    report, g, _ = run_grid(artifacts, samples(T, n), faults={(0, 1, 0): ("exit", 8), (0, 2, 1): ("raise", 25)})
    assert_all_exact(report, n)
    cells = by_cell(report)
    assert cells["cell[1,0]@dev2"]["kind"] == "died" and cells["cell[2,1]@dev5"]["kind"] == "raised"
    assert "injected fault (raise)" in cells["cell[2,1]@dev5"]["cause"]
    assert 8 in cells["cell[1,0]@dev2"]["replayed"] and 25 in cells["cell[2,1]@dev5"]["replayed"]
    assert all(c["restarted"] for c in cells.values())
    assert g.stream.duplicated == 0 and report.replayed == sum(len(r["replayed"]) for r in report.restarts)
    # liveness bounds, not speed targets (those are benchmarks/chaos.py's: this machine is shared)
    assert all(r["rewired_s"] < 60 and r["streaming_again_s"] is not None for r in report.restarts)
    text = report.summary()
    assert "restarts: 2" in text and "cell[1,0]@dev2 died" in text and "replayed" in text
    doc = report.to_json()
    assert doc["replayed"] == report.replayed and doc["restarts"][0]["cells"][0]["cell"] == "cell[1,0]@dev2"


def test_frozen_and_stuck_cells_are_named_within_their_deadlines(cluster, artifacts):
    """SIGSTOP (silent) and a chunk that never ends (alive, answering pings): both named within
    hang_floor_s + a heartbeat + the settle time, restarted, replayed."""
    n = 40
    rkw = dict(hang_floor_s=3.0, faults={(0, 2, 1): ("hang", 10), (0, 0, 1): ("stall", 28)})
    t0 = time.perf_counter()
    report, _, _ = run_grid(artifacts, samples(T, n), **rkw)
    assert_all_exact(report, n)
    cells = by_cell(report)
    assert cells["cell[2,1]@dev5"]["kind"] == "frozen" and "heartbeat" in cells["cell[2,1]@dev5"]["cause"]
    assert cells["cell[0,1]@dev1"]["kind"] == "stuck" and "inside one chunk" in cells["cell[0,1]@dev1"]["cause"]
    assert time.perf_counter() - t0 < 120


def test_past_max_restarts_the_run_stops_naming_the_cell(cluster, artifacts):
    t0 = time.perf_counter()
    with pytest.raises(RunError, match=r"cell\[1,0\]@dev2 failed: cell\[1,0\]@dev2: RuntimeError: injected fault "
                                       r"\(raise\) \(restarted 0 time\(s\): gave up after --max-restarts 0\)"):
        run_grid(artifacts, samples(T, 10), grid=(2, 2), faults={(0, 1, 0): ("raise", 2)}, max_restarts=0)
    assert time.perf_counter() - t0 < 60


def test_a_failed_replica_is_restarted_alone(cluster, artifacts):
    n = 24
    report, _, _ = run_grid(artifacts, samples(T, n), grid=(2, 1), replicas=2, faults={(1, 1, 0): ("exit", 9)})
    assert_all_exact(report, n)
    (r,) = report.restarts
    assert r["replica"] == 1 and r["cells"][0]["cell"] == "r1.cell[1,0]@dev3"
    assert r["replayed"] and all(i % 2 == 1 for i in r["replayed"]), "only replica 1's samples (odd ids) replay"
    per_cell = {c["cell"]: c["samples"] for c in report.cells}
    assert per_cell["cell[0,0]@dev0"] == per_cell["cell[1,0]@dev1"] == n // 2   # replica 0 never replayed


def test_restart_over_tcp(cluster, artifacts):
    n = 20
    report, _, _ = run_grid(artifacts, samples(T, n), grid=(2, 2), transport="tcp", faults={(0, 0, 1): ("exit", 6)})
    assert_all_exact(report, n)
    assert [c["kind"] for r in report.restarts for c in r["cells"]] == ["died"]


def test_chaos_kills_and_freezes_random_cells_nothing_lost_or_duplicated(cluster, artifacts):
    """The suite's short chaos run: a 3x2 grid streams 200 samples while a helper SIGKILLs one random
    cell and SIGSTOPs another at random times."""
    n = 200
    report, g, monkey = run_grid(artifacts, samples(T, n), hang_floor_s=3.0, max_restarts=5,
                                 chaos=lambda g: Chaos(g, faults=2, total=n, kinds=("kill", "stop"), seed=7))
    s = monkey.summary(report, expected=n)
    assert s["injected"] == 2 and s["survived"] == 2, s
    assert s["lost"] == 0 and s["duplicated"] == 0 and s["bit_exact"] == n, s
    assert_all_exact(report, n)
    assert sorted(c["kind"] for r in report.restarts for c in r["cells"] if c["restarted"]) == ["died", "frozen"], \
        report.restarts   # one restart per fault: none for a replica that only waited for its recovery
    kill, stop = s["faults"]
    # the targets (15 s, 10 s) are benchmarks/chaos.py's; here liveness bounds on a shared machine
    assert kill["diagnosis"] == "died" and kill["streaming_again_after_s"] < 60, kill
    assert stop["diagnosis"] == "frozen" and stop["named_after_s"] < 3.0 + 20, stop   # hang_floor_s + slack


# ----------------------------------------------------------------------------- bad samples

def test_bad_samples_of_every_kind_are_rejected_alone_in_a_library_stream(cluster, artifacts):
    from bidl_runtime.driver.samples import Unreadable
    good = samples(T, 4)
    x = good[0][0]
    huge = good[1][0].clone() * 3e38        # finite, but overflows float32 inside the model
    items = [good[0],
             (x, "cat"), (x, 2.0), (x, 10), (x, True), (x, torch.tensor([1, 2])),       # labels
             torch.empty(x.shape, device="meta"), x.to_sparse(), (x.double(), 1),       # device, layout, dtype
             (x[:, :, :15], 1), (x, 1, 2), Unreadable("dataset item 11 cannot be read: OSError: gone"),
             (huge, 1), good[2], (x, torch.tensor(3)), good[3]]
    report = stream(cfg(T), items, grid=(2, 2), rcfg=RuntimeConfig(metrics=False), artifacts=artifacts, verify=True)
    assert sorted(report.outputs) == [0, 13, 14, 15]
    assert report.labels[14] == 3
    why = report.rejected
    assert "label 'cat'" in why[1] and "label 2.0" in why[2] and "0..9" in why[3] and "label True" in why[4]
    assert "label tensor" in why[5] and "meta-device" in why[6] and "sparse" in why[7] and "float64" in why[8]
    assert "shape" in why[9] and "tuple of 3" in why[10] and "item 11 cannot be read" in why[11]
    assert "overflow float32" in why[12] and "NaN/Inf" in why[12]
    assert report.verify["equal"] == report.verify["compared"] == 4


# ------------------------------------------------------------------------------- journal

def test_journal_lets_a_rerun_skip_what_is_done(cluster, artifacts, tmp_path):
    """Run 1 dies when its data source fails after 9 samples (the driver's crash, as far as the journal
    is concerned); run 2 with the same journal streams only the rest, and all outputs are exact."""
    n = 16
    items = samples(T, n)
    ident = {"config": "tiny", "data": "glyph_samples seed 0"}
    path = tmp_path / "run.jsonl"

    def failing():
        for i, item in enumerate(items):
            if i == 9:
                raise OSError("the data source went away")
            yield item
    plan = plan_of(artifacts, (2, 2))
    g = Grid(plan, RuntimeConfig(metrics=False))
    try:
        j = Journal.open(path, ident)
        with pytest.raises(RunError, match="reading samples failed: OSError: the data source went away"):
            g.run(failing(), progress=False, journal=j)
        j.close()
        first = Journal.open(path, ident)
        done = set(first.done)
        first.close()
        assert done == set(range(9)), "what the source gave before failing is finished and journaled"
        j = Journal.open(path, ident)
        report = g.run(items, progress=False, verify=True, journal=j)
        j.close()
    finally:
        g.close()
    assert report.resumed == len(done) and list(report.outputs) == list(range(n)), "all, in sample order"
    assert report.verify["compared"] == n - len(done) == report.verify["equal"]
    assert {c["samples"] for c in report.cells} == {n - len(done)}, "the cells ran only what was not done"
    ref = stream(cfg(T), items, grid=(2, 2), rcfg=RuntimeConfig(metrics=False), artifacts=artifacts)
    assert all(torch.equal(report.outputs[i], ref.outputs[i]) for i in range(n)), "journaled outputs are exact"
    with pytest.raises(ValueError, match="belongs to another run: data is"):
        Journal.open(path, dict(ident, data="another"))


# -------------------------------------------------------------------------------- memory

def test_verify_keeps_no_inputs(cluster, artifacts):
    """Inputs are dropped once their result is checked: none outlives the run (weak references)."""
    refs = []

    def gen():
        for x, label in samples(T, 30):
            refs.append(weakref.ref(x))
            yield x, label
    report, g, _ = run_grid(artifacts, gen(), grid=(2, 2))
    assert report.verify["equal"] == 30
    assert not g.stream.ledger
    del report
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_closing_a_grid_leaves_no_cells(cluster, artifacts):
    _, g, _ = run_grid(artifacts, samples(T, 3), grid=(2, 1))
    names = [c.name for c in g.plan.cells]
    deadline = time.perf_counter() + 15
    while time.perf_counter() < deadline:
        alive = []
        for n in names:
            try:
                ray.get_actor(n)
                alive.append(n)
            except ValueError:
                pass
        if not alive:
            break
        time.sleep(0.5)
    assert not alive
