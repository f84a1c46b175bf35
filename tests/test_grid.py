"""The grid on a real (local) Ray cluster: outputs equal the single-device reference, exactly."""
import os
import time

import pytest
import ray
import torch

from bidl_runtime.api import stream
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.driver.grid import RunError
from conftest import glyph_samples as samples
from conftest import tiny_glyphs as cfg

N = 5


@pytest.fixture(scope="module")
def cluster(ray_local):   # cluster.start_local: token auth, loopback
    yield


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts):   # the session's tiny-model artifacts (conftest): other modules reuse them
    return tiny_artifacts


def run(T, artifacts, grid, replicas=1, items=None, **rkw):
    rcfg = RuntimeConfig(metrics=False, **rkw)
    items = items if items is not None else samples(T, N)
    return stream(cfg(T), items, grid=grid, replicas=replicas, rcfg=rcfg, artifacts=artifacts,
                  verify=True)


def assert_exact(report, n=N):
    assert report.verify == {"equal": n, "compared": n, "max_abs_diff": 0.0}
    assert list(report.outputs) == list(range(n)), "results must come back in sample order"
    assert all(y.shape == (1, 10) for y in report.outputs.values())
    assert len({tuple(y.flatten().tolist()) for y in report.outputs.values()}) > 1, "outputs must vary"


@pytest.mark.parametrize("grid", [(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (3, 2)])
def test_grid_equals_reference_T_not_divisible(cluster, artifacts, grid):
    report = run(7, artifacts, grid)
    assert_exact(report)
    assert report.plan.slices == {1: (7,), 2: (4, 3), 3: (3, 2, 2)}[grid[0]]
    assert {c["cell"]: c["samples"] for c in report.cells} == {c.name: N for c in report.plan.cells}


@pytest.mark.parametrize("grid", [(2, 1), (3, 2)])
def test_grid_equals_reference_T_divisible(cluster, artifacts, grid):
    assert_exact(run(6, artifacts, grid))


def test_replicas_round_robin_keep_order(cluster, artifacts):
    report = run(7, artifacts, (2, 1), replicas=2, items=samples(7, 6))
    assert_exact(report, 6)
    per_cell = {c["cell"]: c["samples"] for c in report.cells}
    assert per_cell == {"cell[0,0]@dev0": 3, "cell[1,0]@dev1": 3, "r1.cell[0,0]@dev2": 3, "r1.cell[1,0]@dev3": 3}


def test_tcp_transport_gives_the_same_outputs(cluster, artifacts):
    report = run(7, artifacts, (2, 2), transport="tcp")
    assert_exact(report)
    assert {e["transport"] for e in report.edges()} == {"tcp"}


def test_bad_samples_are_rejected_and_the_stream_continues(cluster, artifacts):
    good = samples(7, 4)
    bad_nan = good[1][0].clone()
    bad_nan[3, 0, 2, 2] = float("nan")
    items = [good[0], (torch.zeros(7, 2, 15, 16), 1), good[1], (good[2][0].to(torch.float64), 2),
             (bad_nan, 3), good[3]]
    report = run(7, artifacts, (2, 2), items=items)
    assert sorted(report.rejected) == [1, 3, 4]
    assert "sample 1: shape [7, 2, 15, 16]" in report.rejected[1]
    assert "dtype float64" in report.rejected[3] and "NaN" in report.rejected[4]
    assert list(report.outputs) == [0, 2, 5]
    assert report.verify["equal"] == report.verify["compared"] == 3


@pytest.mark.parametrize("fault, match", [("raise", "injected fault"), ("exit", "died")])
def test_failing_cell_stops_the_run_naming_it(cluster, artifacts, fault, match):
    """With no restarts allowed (``max_restarts=0``; test_restart.py covers restart and replay)."""
    t0 = time.perf_counter()
    with pytest.raises(RunError, match=rf"cell\[1,0\]@dev2.*{match}.*--max-restarts 0"):
        run(7, artifacts, (2, 2), faults={(0, 1, 0): (fault, 2)}, max_restarts=0)
    assert time.perf_counter() - t0 < 60
    assert not alive_cells(["cell[0,0]@dev0", "cell[0,1]@dev1", "cell[1,0]@dev2", "cell[1,1]@dev3"])


def alive_cells(names, wait_s=15.0):
    """Names of cell actors still registered after up to ``wait_s`` (killing is asynchronous)."""
    deadline = time.perf_counter() + wait_s
    while True:
        alive = []
        for n in names:
            try:
                ray.get_actor(n)
                alive.append(n)
            except ValueError:
                pass
        if not alive or time.perf_counter() > deadline:
            return alive
        time.sleep(0.5)


def test_emulated_backend_moves_real_shapes_at_device_pace(cluster, artifacts):
    rcfg = RuntimeConfig(backend="emulated", metrics=False)
    from bidl_runtime.runtime_config import DeviceProfile
    rcfg.profile = DeviceProfile(ref_fps=2000.0)
    report = stream(cfg(7), samples(7, N), grid=(2, 2), rcfg=rcfg)
    assert report.samples == N
    edges = {e["edge"]: e for e in report.edges()}
    state_bytes = edges["cell[1,0]@dev2:state"]["bytes"]
    assert state_bytes == N * 4 * (32 * 16 * 16 + 64 * 8 * 8)  # membranes of blocks 0 and 1, fp32
    for c in report.cells:
        assert c["busy_s"] > 0 and c["samples"] == N


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_cells_block_instead_of_spinning(cluster, artifacts):
    from bidl_runtime.api import GridJob
    from bidl_runtime.driver.grid import Grid
    rcfg = RuntimeConfig(metrics=False)
    plan = GridJob(cfg(7), grid=(2, 2), runtime=rcfg, artifacts=artifacts).plan()
    g = Grid(plan, rcfg)
    try:
        g.start()
        g.wire()
        pids = [s["pid"] for s in ray.get([a.stats.remote() for a in g.actors.values()])]
        time.sleep(1.0)
        before = [cpu_seconds(p) for p in pids]
        time.sleep(4.0)
        used = [(cpu_seconds(p) - b) / 4.0 for p, b in zip(pids, before)]
        g.drain()
    finally:
        g.close()
    # a blocked cell wakes 1/poll_s times a second (bounded waits); Ray's own threads add ~1 %
    assert max(used) < 0.03, f"idle cells used {[f'{100 * u:.1f}%' for u in used]} of a core"


def test_columns_cut_inside_a_residual_block_equal_the_reference(cluster, tmp_path):
    """A tiny ResNet auto-split into 2 columns cuts inside a residual block: the activation edge carries
    the block's skip (and the raw channels of a convolution cut between its output channels) as
    further tensors, and the grid's outputs equal the single-device reference exactly."""
    from bidl_models.config import load_config
    from bidl_models.datasets.synthetic import synthetic_samples
    from conftest import TINY, active_net, write_config
    backbone, inshape = TINY["ResNetLifItout"]
    c = load_config(write_config(tmp_path / "resnet_cut.py", dict(backbone, timestep=5, noise=0.0), inshape))
    _, ckpt = active_net(c, tmp_path / "resnet_cut.pth")
    items = [(x, i) for i, x in enumerate(synthetic_samples(5, (2, 32, 32), N, 0, rate=0.4))]
    report = stream(c, items, grid=(2, 2), rcfg=RuntimeConfig(metrics=False), checkpoint=ckpt,
                    artifacts=tmp_path / "resnet_cut", verify=True)
    assert_exact(report)
    split = report.plan.splits[0][1]
    assert isinstance(split, str), f"expected a cut inside a block, got {report.plan.splits}"
    edge = report.plan.edge("cell[1,1]@dev3:x")
    names = [t.name for t in edge.layout]
    assert names == (["x", "part", "skip"] if ":" in split else ["x", "skip"])
    moved = {e["edge"]: e["bytes"] for e in report.edges()}
    assert moved["cell[1,1]@dev3:x"] == N * edge.nbytes
