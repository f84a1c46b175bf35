"""The grid planner (no Ray): slicing, segments, devices, and planning-time errors."""
import pytest

from bidl_models.config import load_config
from bidl_runtime.plan import make_plan, parse_grid, time_slices

SMALL = ["model.backbone.h0=16", "model.backbone.w0=16", "models_compile_inputshape=[[1,2,16,16]]"]


def small(T=10, name="clif3fc3dm_itout-b16x1-dvsmnist"):
    return load_config(name, SMALL + [f"model.backbone.timestep={T}"])


def test_parse_grid():
    assert parse_grid("3x2") == (3, 2) and parse_grid("12X2") == (12, 2) and parse_grid((12, 2)) == (12, 2)
    for bad in ("3", "3x", "0x2", "ax2", "3x2x1", (1,), (1, True)):
        with pytest.raises(ValueError, match="grid="):
            parse_grid(bad)


@pytest.mark.parametrize("T, R, want", [(10, 3, [4, 3, 3]), (7, 3, [3, 2, 2]), (20, 2, [10, 10]), (5, 5, [1] * 5)])
def test_time_slices_follow_array_split(T, R, want):
    import numpy as np
    assert time_slices(T, R) == want == [len(a) for a in np.array_split(np.arange(T), R)]


def test_time_slices_need_a_step_per_row():
    with pytest.raises(ValueError, match="rows <= T"):
        time_slices(3, 4)


def test_plan_3x2_cells_devices_and_auto_split():
    plan = make_plan(small(10), (3, 2))
    assert (plan.rows, plan.cols, len(plan.cells)) == (3, 2, 6)
    assert plan.slices == (4, 3, 3) and plan.chunk_lens == (3, 4)
    assert plan.splits[0][0] == 0 and plan.splits[-1][1] == 6 and plan.splits[0][1] == plan.splits[1][0]
    c = plan.cell(0, 2, 1)
    assert (c.name, c.t0, c.chunk_len, c.device) == ("cell[2,1]@dev5", 7, 3, 5)
    assert "cell[2,1]@dev5" in plan.table()


def test_plan_from_lynxi_devices_and_mp_segments():
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", ["lynxi_devices=[[4,5],[2,3]]"])
    plan = make_plan(cfg)
    assert (plan.rows, plan.cols) == (2, 2) and plan.splits == ((0, 6), (6, 16))
    assert [c.device for c in plan.cells] == [4, 5, 2, 3] and plan.split_source.startswith("config")


def test_replicas_get_their_own_devices():
    plan = make_plan(small(10), (2, 1), replicas=3)
    assert [c.device for c in plan.cells] == [0, 1, 2, 3, 4, 5]
    assert plan.cell(2, 1, 0).name == "r2.cell[1,0]@dev5"


def test_more_rows_than_time_steps_fails_at_planning():
    with pytest.raises(ValueError, match="rows <= T"):
        make_plan(small(4), (5, 1))


def test_segment_count_must_match_columns():
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp")
    with pytest.raises(ValueError, match="2 segment models .* 3 columns"):
        make_plan(cfg, (1, 3))


def test_more_devices_than_the_cluster_has():
    with pytest.raises(ValueError, match="cluster has 4 devices"):
        make_plan(small(10), (3, 2), device_nodes=["n0"] * 4)
    with pytest.raises(ValueError, match="only 6 blocks"):
        make_plan(small(10), (1, 7))


def test_bad_replicas_and_ragged_devices():
    with pytest.raises(ValueError, match="replicas"):
        make_plan(small(10), (1, 1), replicas=0)
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs", ["lynxi_devices=[[0,1],[2]]"])
    with pytest.raises(ValueError, match="ragged"):
        make_plan(cfg)


def test_plan_cli(capsys):
    from bidl_runtime.plan import main
    assert main(["--config", "clif3fc3dm_itout-b16x1-dvsmnist", "--grid", "2x2"]) == 0
    assert "cell[1,1]@dev3" in capsys.readouterr().out
    assert main(["--config", "clif3fc3dm_itout-b16x1-dvsmnist", "--grid", "40x1"]) == 2
    assert "rows <= T" in capsys.readouterr().err
