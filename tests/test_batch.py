"""``--batch N``: N samples per message end to end (driver, channels, artifacts with a dynamic batch);
results per sample, in order; grid == single-device run of the same artifacts, bit for bit."""
import pytest
import torch

from bidl_runtime.api import stream
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.driver.grid import Grid
from bidl_runtime.driver.samples import batch_of
from conftest import glyph_samples as samples, make_plan
from conftest import tiny_glyphs as cfg

T, N = 7, 7   # 7 samples: not divisible by 2 or 4


@pytest.fixture(scope="module")
def cluster(ray_local):
    yield


@pytest.fixture(scope="module")
def artifacts(tiny_artifacts):   # the session's tiny-model artifacts (conftest)
    return tiny_artifacts


def run(artifacts, grid, batch, items=None, **kw):
    rcfg = RuntimeConfig(metrics=False, batch=batch, **kw)
    return stream(cfg(T), items if items is not None else samples(T, N), grid=grid, rcfg=rcfg,
                  artifacts=artifacts, verify=True)


def test_batch_of_orders_and_pads():
    xs = [torch.full((3, 2, 4, 4), float(i)) for i in range(3)]
    b = batch_of(xs, (3, 2, 4, 4), torch.float32, 4)
    assert b.shape == (3, 4, 2, 4, 4)
    assert [float(b[:, j].mean()) for j in range(4)] == [0.0, 1.0, 2.0, 0.0]
    assert batch_of(xs[:1], (3, 2, 4, 4), torch.uint8, 1).shape == (3, 1, 2, 4, 4)
    assert torch.equal(batch_of([xs[1].unsqueeze(1)], (3, 2, 4, 4), torch.float32, 2)[:, 0], xs[1])


def test_runtime_batch_must_match_the_plans_programs():
    plan = make_plan(cfg(T), (2, 1))            # shapes for batch 1
    with pytest.raises(ValueError, match=r"--batch 2: the plan's programs take 1 sample\(s\) per message"):
        Grid(plan, RuntimeConfig(batch=2))


@pytest.mark.parametrize("grid,batch", [((1, 1), 4), ((2, 2), 2), ((3, 2), 4), ((2, 1), 1)])
def test_batched_grid_equals_single_device_bit_exact(cluster, artifacts, grid, batch):
    report = run(artifacts, grid, batch)
    assert report.verify == {"equal": N, "compared": N, "max_abs_diff": 0.0}
    assert list(report.outputs) == list(range(N)), "results per sample, in sample order"
    assert all(y.shape == (1, 10) for y in report.outputs.values())
    assert len({tuple(y.flatten().tolist()) for y in report.outputs.values()}) > 1, "outputs must vary"
    messages = -(-N // batch)
    assert {c["cell"]: c["samples"] for c in report.cells} == {c.name: messages for c in report.plan.cells}
    x_edge = report.plan.outputs(None)[0].layout[0]
    assert x_edge.shape[1] == batch
    assert report.samples_per_s > 0


def test_batches_agree_with_unbatched_and_skip_rejected_samples(cluster, artifacts):
    items = samples(T, N)
    items[2] = (torch.zeros(T, 2, 15, 16), 0)   # rejected: the groups close over the accepted samples only
    one = run(artifacts, (2, 1), 1, items)
    four = run(artifacts, (2, 1), 4, items)
    assert sorted(four.rejected) == [2] and list(four.outputs) == [0, 1, 3, 4, 5, 6]
    assert four.verify["equal"] == four.verify["compared"] == 6
    worst = max(float((one.outputs[i] - four.outputs[i]).abs().max()) for i in four.outputs)
    assert worst <= 1e-5, f"batched outputs differ from unbatched by {worst}"
    assert four.labels == one.labels


def test_a_restart_replays_whole_messages(cluster, artifacts):
    """A cell dies on a batched message: its replica is restarted and every message in flight is
    replayed whole; each sample comes back once, bit-exact, in order."""
    n = 9
    report = run(artifacts, (2, 1), 2, samples(T, n), faults={(0, 1, 0): ("exit", 4)})
    assert report.verify == {"equal": n, "compared": n, "max_abs_diff": 0.0}
    assert list(report.outputs) == list(range(n))
    assert len(report.restarts) == 1 and report.restarts[0]["cells"][0]["kind"] == "died"
    replayed = report.restarts[0]["replayed"]
    assert {4, 5} <= set(replayed), replayed
    assert {i ^ 1 for i in replayed if i ^ 1 < n} <= set(replayed), replayed   # messages (4, 5), ... whole
