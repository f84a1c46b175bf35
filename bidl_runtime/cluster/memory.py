"""How much memory the nodes have available for a grid's cells (the admission compares it with what
the plan needs, :mod:`bidl_runtime.plan.admission`).

This machine: ``MemAvailable`` of /proc/meminfo (what the kernel can hand out without swapping).
Another node of a joined cluster: Ray's ``memory`` resource of that node (Ray sets it at the node's
start from what it had available then), the best figure the driver gets without running anything there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from bidl_runtime.plan.place import Cluster


def available_bytes() -> Optional[int]:
    """This machine's available memory in bytes (None where /proc/meminfo says nothing)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def node_memory(cluster: Cluster) -> tuple[dict[str, int], dict[str, str]]:
    """Available bytes per node of a connected ``cluster`` (this machine's node: ``MemAvailable``;
    others: Ray's ``memory`` resource) and each node's address (for messages)."""
    import ray   # only for a connected cluster (this module stays importable without Ray)
    here = available_bytes()
    have: dict[str, int] = {}
    addresses: dict[str, str] = {}
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        node = n["NodeID"]
        addresses[node] = n.get("NodeManagerAddress", "?")
        if node == cluster.driver_node and here is not None:
            have[node] = here
        elif n.get("Resources", {}).get("memory"):
            have[node] = int(n["Resources"]["memory"])
    return have, addresses
