"""Two Ray nodes on this machine: cells placed on both, artifacts shipped to the node that lacks
them, cross-node edges over tcp, same outputs; no working directory shared by driver and nodes."""
from pathlib import Path

import pytest

from bidl_runtime.api import stream
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.cluster.nodes import device_map
from conftest import glyph_samples, tiny_glyphs


@pytest.fixture(scope="module")
def report(two_nodes):
    # a relative artifact directory: it exists only under the driver's working directory, which is
    # neither node's (each node runs in its own); cells must get paths that exist on their node
    return stream(tiny_glyphs(7), glyph_samples(7, 4, seed=5), grid=(2, 2), rcfg=RuntimeConfig(metrics=False),
                  artifacts="artifacts", verify=True, trace="trace.json")


def test_cells_on_both_nodes_cross_node_transport_same_outputs(two_nodes, report):
    nodes = device_map().device_nodes
    assert len(nodes) == 4 and nodes[0] == nodes[1] != nodes[2] == nodes[3]
    assert report.verify == {"equal": 4, "compared": 4, "max_abs_diff": 0.0}
    assert list(report.outputs) == [0, 1, 2, 3]
    ran_on = {c["cell"]: c["node"] for c in report.cells}
    assert ran_on == {c.name: c.node for c in report.plan.cells}
    assert ran_on["cell[0,0]@dev0"] == nodes[0] and ran_on["cell[1,0]@dev2"] == nodes[2]
    via = {e["edge"]: e["transport"] for e in report.edges()}
    assert via["cell[1,0]@dev2:state"] == "tcp" and via["cell[1,1]@dev3:state"] == "tcp"  # row 0 -> row 1
    assert via["cell[0,1]@dev1:x"] == "shm" and via["cell[1,1]@dev3:x"] == "shm"        # within a node
    assert via["driver:result[0]"] == "tcp"
    edges = {e["edge"]: e for e in report.edges()}
    assert edges["cell[1,0]@dev2:state"]["messages"] == 4 and edges["cell[1,0]@dev2:state"]["bytes"] > 0


def test_artifacts_are_shipped_to_the_other_node_and_checked(two_nodes, report):
    dirs = two_nodes["dirs"]
    driver_arts = (dirs["driver"] / "artifacts").resolve()
    programs = {c["cell"]: Path(c["program"]) for c in report.cells}
    for name in ("cell[0,0]@dev0", "cell[0,1]@dev1"):              # the driver's node: its own files, absolute
        assert programs[name].is_absolute() and driver_arts in programs[name].parents
    for name in ("cell[1,0]@dev2", "cell[1,1]@dev3"):              # the other node: its store's copies
        assert programs[name].parent == dirs["second-store"]
        assert {p.name for p in programs[name].iterdir()} == {"net_params.json", "program.pt2", "program.ts"}
    assert {c["format"] for c in report.cells} == {"torchscript"}
    assert not any(dirs["head"].iterdir()) and not any(dirs["second"].iterdir())  # nothing in the nodes' cwds

    from bidl_runtime.cluster.ship import Package, ship
    pkg = Package.of(next(driver_arts.rglob("model_1/t3_b1")))      # what cell[1,1] runs, the driver's copy
    node = report.plan.cell(0, 1, 1).node
    paths, sent = ship([pkg], node)
    assert sent == [] and Path(paths[pkg.digest]) == programs["cell[1,1]@dev3"]   # already there: no bytes sent
    broken = programs["cell[1,1]@dev3"] / "program.ts"
    broken.write_bytes(b"not the program")
    paths, sent = ship([pkg], node)                                # a damaged copy is replaced
    assert sent == [pkg.digest] and Package.of(paths[pkg.digest]).files == pkg.files


def test_trace_maps_the_other_nodes_cells_onto_the_drivers_clock(two_nodes, report):
    """Cells on the second node are placed on the driver's timeline through both nodes' wall clocks
    (one machine here, so the shift is tiny), and their spans still follow the grid's order."""
    import json

    from bidl_runtime.driver import trace as bt
    doc = json.loads((two_nodes["dirs"]["driver"] / "trace.json").read_text())
    nodes = device_map().device_nodes
    od = doc["otherData"]
    assert od["driver_node"] == nodes[0] and set(od["nodes_mapped_by_wall_clock_ms"]) == {nodes[2]}
    assert abs(od["nodes_mapped_by_wall_clock_ms"][nodes[2]]) < 5.0
    tracks = bt.spans_of(doc)
    comp = {n: {e["args"]["sample"]: e for e in tracks[n] if e["name"] == "compute"} for n in tracks if n != "driver"}
    for i in range(4):     # row 1 (second node) computes sample i after row 0 (head node) finished it
        for s in (0, 1):
            above, below = comp[f"cell[0,{s}]@dev{s}"][i], comp[f"cell[1,{s}]@dev{2 + s}"][i]
            assert below["ts"] >= above["ts"] + above["dur"] - 0.01
