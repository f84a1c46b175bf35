"""The grid planner (no Ray): slicing, segments, devices, edges, and planning-time errors."""
import pytest

from bidl_models.config import load_config
from bidl_models.slicing import GridLayout, parse_grid, time_slices
from bidl_runtime.plan.place import Cluster, place, rebind_driver
from conftest import make_plan
from conftest import tiny_dvsmnist as small


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
    from bidl_runtime.plan.__main__ import main
    assert main(["--config", "clif3fc3dm_itout-b16x1-dvsmnist", "--grid", "2x2"]) == 0
    assert "cell[1,1]@dev3" in capsys.readouterr().out
    assert main(["--config", "clif3fc3dm_itout-b16x1-dvsmnist", "--grid", "40x1"]) == 2
    assert "rows <= T" in capsys.readouterr().err


def test_edges_of_a_3x2_grid():
    plan = make_plan(small(10), (3, 2))
    kinds = {}
    for e in plan.edges:
        kinds.setdefault(e.kind, []).append(e)
    assert {k: len(v) for k, v in kinds.items()} == {"input": 3, "activation": 3, "state": 4, "result": 1}
    names = {(e.kind, e.src, e.dst) for e in plan.edges}
    assert ("input", None, (0, 1, 0)) in names and ("activation", (0, 1, 0), (0, 1, 1)) in names
    assert ("state", (0, 0, 1), (0, 1, 1)) in names and ("result", (0, 2, 1), None) in names
    assert {e.transport for e in plan.edges} == {"shm"}                     # one node
    # what a cell reads: cell (1, 1) takes an activation and a state, sends a state on
    assert [e.kind for e in plan.inputs((0, 1, 1))] == ["activation", "state"]
    assert [e.kind for e in plan.outputs((0, 1, 1))] == ["state"]
    assert [e.kind for e in plan.outputs((0, 2, 1))] == ["result"]
    e = plan.edge("cell[1,1]@dev3:x")
    assert e.layout[0].shape[:2] == (3, 1) and e.layout[0].shape == plan.cell(0, 1, 1).program.signature.input.shape
    state = plan.edge("cell[2,0]@dev4:state")
    assert [t.name for t in state.layout] == [t.name for t in plan.cell(0, 2, 0).program.signature.state]
    assert plan.edge("driver:result[0]").layout[0].shape == (1, 10)


def test_transports_follow_nodes_and_can_be_forced():
    layout = GridLayout.resolve(small(10), (2, 2))
    cfg = small(10)
    nodes = ("a", "a", "b", "b")
    plan = make_plan(cfg, (2, 2), device_nodes=nodes)
    via = {e.name: e.transport for e in plan.edges}
    assert via["cell[1,0]@dev2:state"] == "tcp" and via["cell[0,1]@dev1:x"] == "shm"
    assert via["cell[1,0]@dev2:x"] == "tcp"                                 # driver on "local", cell on "b"
    assert {e.transport for e in make_plan(cfg, (2, 2), transport="tcp").edges} == {"tcp"}
    moved = rebind_driver(plan, "b")
    assert moved.edge("cell[1,0]@dev2:x").transport == "shm" and moved.edge("cell[0,0]@dev0:x").transport == "tcp"
    assert moved.edge("driver:result[0]").transport == "shm" and moved.driver_node == "b"
    with pytest.raises(ValueError, match="does not fit artifacts"):
        from bidl_models.model_spec import ModelSpec
        from bidl_runtime.plan.emulated import emulate
        spec = ModelSpec.from_config(cfg, columns=2)
        place(emulate(spec, [10]), Cluster(nodes), layout)


def test_plan_cli_prints_the_edges(capsys):
    from bidl_runtime.plan.__main__ import main
    assert main(["--config", "clif3fc3dm_itout-b16x1-dvsmnist", "--grid", "2x1"]) == 0
    out = capsys.readouterr().out
    assert "cell[1,0]@dev1:state" in out and "driver:result[0]" in out
    for kind in ("input", "state", "result"):
        assert f" {kind} " in out


def test_activation_edges_carry_the_skip_across_a_cut_inside_a_block(tmp_path):
    """Columns cut inside a residual block: the activation edge's layout is x and its carry, as the
    programs of both ends say, and the plan CLI names them."""
    from conftest import TINY
    bb = dict(TINY["ResNetLifItout"][0], timestep=4, h=32, w=32)
    (tmp_path / "cut.py").write_text(
        f"_bb = {bb!r}\n"
        "model_0 = dict(type='ImageClassifier', backbone=dict(_bb, split=[0, '1.2:16']))\n"
        "model_1 = dict(type='ImageClassifier', backbone=dict(_bb, split=['1.2:16', 4]))\n")
    plan = make_plan(load_config(tmp_path / "cut.py"), (2, 2))
    assert plan.splits == ((0, "1.2:16"), ("1.2:16", 4))
    e = plan.edge("cell[1,1]@dev3:x")
    src, dst = plan.cell(0, 1, 0).program.signature, plan.cell(0, 1, 1).program.signature
    assert [t.name for t in e.layout] == ["x", "part", "skip"] == [t.name for t in dst.inputs]
    assert [t.shape for t in e.layout] == [t.shape for t in (src.output, *src.carry_out)]
    assert e.layout[1].shape == (2, 1, 16, 4, 4) and e.nbytes == sum(t.nbytes for t in e.layout)
    assert not plan.cell(0, 0, 0).program.signature.carry_in and not dst.carry_out
    assert "x, part, skip" in plan.table() or "part[2, 1, 16, 4, 4]" in plan.table()
