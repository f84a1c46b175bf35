"""Placement that knows hosts (no Ray): host maps, the assignment that keeps bytes within hosts, the
re-placement of a lost host's cells, and what ``bidl-plan`` shows of hosts."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from bidl_models.config import load_config
from bidl_models.slicing import GridLayout
from bidl_models.specs import Signature, TensorSpec
from bidl_runtime.api import GridJob
from bidl_runtime.plan.hosts import HostMap, assign_hosts, crossing_bytes, replace_cells, weighted_edges
from bidl_runtime.plan.place import Cluster, place
from compile.program import Program
from conftest import SMALL, tiny_dvsmnist

A, B, C, D = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"
# ResNetLif50 at 2x128x128, T=48 on 12x2 (bidl-plan's figures): input, activation, state per column
X_IN, ACT, STATE = 524_288, 1_212_416, (9_633_792, 2_916_392)


@dataclass(frozen=True)
class Shapes:
    """A program set of given edge sizes (bytes per message), like the emulated backend's."""

    rows: int
    cols: int
    net: str = "shapes"
    batch: int = 1
    split_source: str = "test"

    @property
    def T(self) -> int:
        return 4 * self.rows

    @property
    def slices(self) -> tuple[int, ...]:
        return (4,) * self.rows

    @property
    def splits(self):
        return tuple((s, s + 1) for s in range(self.cols))

    def programs(self):
        def spec(name, shape):
            return TensorSpec(name, shape, "float32")
        out = {}
        for s in range(self.cols):
            x = spec("x", (4, 1, X_IN // 16 if s == 0 else ACT // 16))
            y = spec("y", (4, 1, ACT // 16 if s < self.cols - 1 else 10))
            out[(s, 4)] = Program(Signature(x, y, (spec("v", (1, STATE[s % 2] // 4)),)))
        return out


def shapes_plan(rows=12, cols=2):
    layout = GridLayout.resolve(None, (rows, cols))
    return place(Shapes(rows, cols), Cluster.local(rows * cols), layout)


def cost_of(plan, devices, hosts, driver=A):
    host_of_device = hosts.device_hosts
    where = {(k, g, s): host_of_device[devices[k][g][s]] for k in range(plan.replicas)
             for g in range(plan.rows) for s in range(plan.cols)}
    return crossing_bytes(weighted_edges(plan), where, driver)


def test_host_maps_from_flags_and_config():
    hosts = HostMap.parse(f"{A}=8, {B}=8,{C}=8", f"{B}=4,{D}=2")
    assert hosts.addresses == (A, B, C, D) and hosts.active == 24
    assert hosts.device_hosts[:8] == (A,) * 8 and hosts.device_hosts[8:20] == (B,) * 12
    assert hosts.standby_ids == (16, 17, 18, 19, 28, 29) and hosts.active_ids(C) == tuple(range(20, 28))
    cfg = {"lynxi_hosts": {A: [0, 1, 2, 3], B: 2}, "lynxi_standby": {B: 1}}
    assert HostMap.resolve(cfg).hosts[0].devices == 4 and HostMap.resolve(cfg).source == "lynxi_hosts"
    assert HostMap.resolve(cfg, hosts=f"{C}=2").addresses == (C,)          # the flag wins over the config
    assert HostMap.resolve({}) is None


@pytest.mark.parametrize("hosts, standby, match", [
    ("10.0.0.1", None, r"--hosts '10.0.0.1': expected HOST=N"),
    ("node1=4", None, r"--hosts node1=4: 'node1' is not an IP address"),
    ("10.0.0.1=0", None, r"--hosts 10.0.0.1=0: expected a device count of 1..4096"),
    ("10.0.0.1=x", None, r"--hosts 10.0.0.1=x: expected a device count"),
    ("10.0.0.1=2,10.0.0.1=3", None, "host 10.0.0.1 is listed twice"),
    (None, "10.0.0.1=2", "--standby without --hosts"),
])
def test_bad_host_maps_are_one_line_naming_the_flag(hosts, standby, match):
    with pytest.raises(ValueError, match=match):
        HostMap.parse(hosts, standby)


def test_12x2_on_three_hosts_keeps_state_within_hosts_where_it_can():
    """24 cells on 3 x 8 devices: each column's state chain must cross once (12 cells > 8), and the
    planner beats both simple fillings on the real edge sizes."""
    plan = shapes_plan()
    hosts = HostMap.parse(f"{A}=8,{B}=8,{C}=8")
    devices = assign_hosts(plan, hosts, A)
    got = cost_of(plan, devices, hosts)
    row_major = tuple(tuple(tuple(g * 2 + s for s in range(2)) for g in range(12)) for _ in range(1))
    col_major = tuple(tuple(tuple(s * 12 + g for s in range(2)) for g in range(12)) for _ in range(1))
    assert got < cost_of(plan, row_major, hosts) and got < cost_of(plan, col_major, hosts)
    assert got == sum(STATE) + 8 * ACT + 4 * X_IN + 40                 # one state hand-off per column
    used = sorted(d for row in devices[0] for d in row)
    assert used == list(range(24))                                    # every active device once
    placed = place(Shapes(12, 2), Cluster.of_hosts(hosts), GridLayout(12, 2, 1, devices))
    assert placed.crossing()["total"] == got and placed.crossing()["state"] == sum(STATE)
    via = {e.kind: e.transport for e in placed.edges if placed.crosses(e)}
    assert set(via.values()) == {"tcp"}
    assert all(e.transport == "shm" for e in placed.edges if not placed.crosses(e))


def test_too_few_devices_and_standby_devices_are_refused():
    plan = shapes_plan(3, 2)
    with pytest.raises(ValueError, match=r"--hosts 10.0.0.1=2, 10.0.0.2=2: 4 active device\(s\), the grid 3x2 .* needs 6"):
        assign_hosts(plan, HostMap.parse(f"{A}=2,{B}=2"))
    hosts = HostMap.parse(f"{A}=4", f"{A}=2")
    with pytest.raises(ValueError, match=r"device ids \[4, 5\], which are declared standby"):
        place(Shapes(3, 2), Cluster.of_hosts(hosts), GridLayout.resolve(None, (3, 2)))


def test_a_lost_hosts_cells_go_to_standby_then_next_to_their_neighbours():
    hosts = HostMap.parse(f"{A}=4,{B}=2,{C}=4", f"{C}=2")
    layout = GridLayout(2, 2, 1, ((((0, 1), (4, 5))),))              # row 0 on A, row 1 on B
    plan = place(Shapes(2, 2), Cluster.of_hosts(hosts), layout)
    lost = [c.key for c in plan.cells if plan.host(c.node) == B]
    free = [2, 3, 6, 7, 8, 9, 10, 11]                               # A's spare 2, C's 4 active + 2 standby
    moves = replace_cells(plan, lost, free, dict(enumerate(hosts.device_hosts)), hosts.standby_ids)
    assert sorted(moves.values()) == [10, 11]                        # standby first
    moves = replace_cells(plan, lost, free, dict(enumerate(hosts.device_hosts)))
    assert sorted(moves.values()) == [2, 3]                          # no standby: next to row 0, on A
    with pytest.raises(ValueError, match=r"2 cell\(s\) to re-place, 1 free device"):
        replace_cells(plan, lost, [6], dict(enumerate(hosts.device_hosts)))


def test_bidl_plan_shows_hosts_transports_and_bytes_per_sample():
    job = GridJob(tiny_dvsmnist(6), grid=(3, 2), hosts=HostMap.parse(f"{A}=2,{B}=2,{C}=2"))
    plan = job.preview()
    text = plan.table()
    assert "host" in text.splitlines()[1] and "bytes/sample" in text
    assert "across hosts:" in text and f"driver on {A}" in text
    crossing = [e for e in plan.edges if plan.crosses(e)]
    assert crossing and all(e.transport == "tcp" for e in crossing)
    assert f"{plan.end_host(crossing[0].src)}->{plan.end_host(crossing[0].dst)}" in text
    assert job.layout_on(Cluster.of_hosts(job.hosts)).source == "--grid on --hosts"
    cfg = load_config("clif3fc3dm_itout-b16x1-dvsmnist", SMALL + ["model.backbone.timestep=6",
                                                                  "lynxi_devices=[[3, 2], [1, 0]]"])
    explicit = GridJob(cfg, hosts=HostMap.parse(f"{A}=2,{B}=2"))     # lynxi_devices: kept as given
    assert explicit.layout_on(Cluster.of_hosts(explicit.hosts)).devices == (((3, 2), (1, 0)),)
    assert {c.device: explicit.preview().host(c.node) for c in explicit.preview().cells} == {3: B, 2: B, 1: A, 0: A}
