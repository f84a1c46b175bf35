"""The connected Ray cluster's devices, as the planner sees them."""
from __future__ import annotations

from typing import Optional

import ray

from bidl_runtime.plan.hosts import HostMap
from bidl_runtime.plan.place import Cluster


def alive_nodes() -> list[dict]:
    """Ray's records of the alive nodes."""
    return [n for n in ray.nodes() if n.get("Alive")]


def device_map(hosts: Optional[HostMap] = None) -> Cluster:
    """The connected cluster's devices. Without ``hosts``: alive nodes in order (the driver's first),
    each contributing its ``bidl_device`` resource count of device ids. With a host map: its hosts in
    its order, each the alive node with that address (ValueError naming the host when none has it,
    or when its node declares fewer ``bidl_device`` resources than the map gives it)."""
    here = ray.get_runtime_context().get_node_id()
    nodes = alive_nodes()
    node_hosts = tuple((n["NodeID"], n.get("NodeManagerAddress", n["NodeID"])) for n in nodes)
    if hosts is None:
        nodes.sort(key=lambda n: (n["NodeID"] != here, n["NodeID"]))
        out: list[str] = []
        for n in nodes:
            out += [n["NodeID"]] * int(n.get("Resources", {}).get("bidl_device", 0))
        return Cluster(tuple(out), here, True, node_hosts)
    by_address: dict[str, list[dict]] = {}
    for n in nodes:
        by_address.setdefault(n.get("NodeManagerAddress", ""), []).append(n)
    out = []
    for h in hosts.hosts:
        found = by_address.get(h.address, [])
        declared = f"{hosts.source} {h.address}={h.devices}" + (f" (+{h.standby} standby)" if h.standby else "")
        if not found:
            seen = ", ".join(sorted(a for a in by_address if a)) or "none"
            raise ValueError(f"{declared}: no alive Ray node has the address {h.address} (the cluster's nodes: {seen})")
        if len(found) > 1:
            raise ValueError(f"{declared}: {len(found)} Ray nodes have the address {h.address}; a host map names "
                             "hosts with one node each")
        have = int(found[0].get("Resources", {}).get("bidl_device", 0))
        if have < h.total:
            raise ValueError(f"{declared}: its Ray node declares {have} bidl_device resource(s), fewer than the "
                             f"{h.total} device(s) given to it (ray start --resources '{{\"bidl_device\": {h.total}}}')")
        out += [found[0]["NodeID"]] * h.total
    return Cluster(tuple(out), here, True, node_hosts, hosts.standby_ids)
