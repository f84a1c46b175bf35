"""Two Ray nodes on this machine: cells placed on both, cross-node edges over tcp, same outputs."""
import pytest
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from ray.cluster_utils import Cluster

from bidl_models.config import load_config
from bidl_runtime.api import stream
from bidl_runtime.cluster import loopback_node
from bidl_runtime.driver import RuntimeConfig, node_devices
from bidl_runtime.session import synthetic_samples


@pytest.fixture(scope="module")
def two_nodes():
    with loopback_node():  # both nodes (and this driver) on 127.0.0.1, token auth from conftest's secure_env
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"bidl_device": 2}})
        cluster.add_node(num_cpus=1, resources={"bidl_device": 2})
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING", namespace="test-two-node")
    assert is_token_auth_enabled()
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_cells_on_both_nodes_cross_node_transport_same_outputs(two_nodes, tmp_path):
    nodes = node_devices()
    assert len(nodes) == 4 and nodes[0] == nodes[1] != nodes[2] == nodes[3]
    cfg = load_config("clif3fc3dm_itout-b16x1-dvsglyphs", [
        "model.backbone.h0=16", "model.backbone.w0=16", "model.backbone.timestep=7",
        "models_compile_inputshape=[[1,2,16,16]]", "data=None"])
    items = [(x, 0) for x in synthetic_samples(7, (2, 16, 16), 4, seed=5, rate=0.4)]
    report = stream(cfg, items, grid=(2, 2), rcfg=RuntimeConfig(metrics=False), artifacts=tmp_path,
                    verify=True)
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
