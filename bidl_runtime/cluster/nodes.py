"""The connected Ray cluster's devices, as the planner sees them."""
from __future__ import annotations

import ray

from bidl_runtime.plan.place import Cluster


def device_map() -> Cluster:
    """The connected cluster: alive nodes in order (the driver's first), each contributing its
    ``bidl_device`` resource count of device ids."""
    here = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    nodes.sort(key=lambda n: (n["NodeID"] != here, n["NodeID"]))
    out: list[str] = []
    for n in nodes:
        out += [n["NodeID"]] * int(n.get("Resources", {}).get("bidl_device", 0))
    return Cluster(tuple(out), here, True)
