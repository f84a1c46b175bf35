"""Hosts in the plan: which devices each host has, which host each cell runs on, and where a lost
host's cells go.

    hosts = HostMap.parse("10.0.0.1=8,10.0.0.2=8,10.0.0.3=8", standby="10.0.0.2=4,10.0.0.3=4")
    devices = assign_hosts(shapes_plan, hosts, driver_host="10.0.0.1")   # [replica][row][col] -> device id
    moves = replace_cells(plan, lost={...}, free=[...])                  # after a host is lost

A **host map** (``--hosts HOST=N[,HOST=N...]`` or the config's ``lynxi_hosts = {'10.0.0.1': 8, ...}``,
standby devices from ``--standby`` / ``lynxi_standby`` alike) lists each host by its address (the
address its Ray node has) with its devices. Device ids run host by host, in the map's order: a host's
active devices, then its standby ones (``A=8`` then ``B=8`` with ``B`` holding 4 standby: A 0..7,
B 8..15 active and 16..19 standby). The planner puts cells on active devices only; standby devices
stay idle until a host is lost (:func:`replace_cells` takes them first).

**Placement across hosts** (:func:`assign_hosts`): cells go to hosts so that the bytes per sample
crossing hosts are fewest, counted on the plan's real edges (a row's state hand-off, 12.55 MB per
sample for ResNetLif50 at 2x128x128, against 1.2 MB of activations and 0.5 MB of input): fill orders
(row-major, column-major, column-major snaking) with every order of the hosts (the driver's host
first: the inputs start there) are scored, then the best is improved by moving and swapping cells
between hosts while that lowers the cost (deterministic). Inside a host, cells take its active device
ids in (replica, row, column) order. ``lynxi_devices`` gives the ids explicitly and is kept as given.

Pure: no Ray, no torch (``bidl-plan`` prints a host-aware plan without either).
"""
from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from .grid_plan import CellKey, GridPlan

MAX_SEARCH_CELLS = 256      # local search (moves and swaps) up to this many cells; larger grids keep the best fill
MAX_HOST_ORDERS = 120       # host orders tried with each fill order (5! = every order of 6 hosts)


@dataclass(frozen=True)
class Host:
    """One host: its address, its active devices and its declared standby devices."""

    address: str
    devices: int
    standby: int = 0

    @property
    def total(self) -> int:
        return self.devices + self.standby


@dataclass(frozen=True)
class HostMap:
    """Hosts in order with their devices (see the module doc); ``source`` names where it came from."""

    hosts: tuple[Host, ...]
    source: str = "--hosts"

    # ------------------------------------------------------------------------------ reading

    @classmethod
    def parse(cls, hosts: Optional[str | Mapping | Sequence], standby: Optional[str | Mapping | Sequence] = None,
              flags: tuple[str, str] = ("--hosts", "--standby")) -> Optional["HostMap"]:
        """A host map from ``HOST=N[,HOST=N...]`` (or a mapping / pairs, a config's form; a value may be a
        list of device ids, which counts as its length) and the standby devices in the same form.
        None when both are empty; ValueError (one line naming the flag and value) when malformed."""
        active = _entries(hosts, flags[0])
        spare = _entries(standby, flags[1])
        if not active and not spare:
            return None
        order = list(active) + [a for a in spare if a not in active]
        out = tuple(Host(a, active.get(a, 0), spare.get(a, 0)) for a in order)
        if not any(h.devices for h in out):
            raise ValueError(f"{flags[1]} without {flags[0]}: the grid needs active devices on some host "
                             f"({flags[0]} HOST=N[,HOST=N...])")
        return cls(out, flags[0])

    @classmethod
    def resolve(cls, cfg: Optional[Mapping] = None, hosts: Optional[str] = None,
                standby: Optional[str] = None) -> Optional["HostMap"]:
        """The flags' host map (``--hosts`` / ``--standby``), else the config's (``lynxi_hosts`` /
        ``lynxi_standby``), else None (the cluster's nodes in order, as :func:`device_map` finds them)."""
        if hosts or standby:
            return cls.parse(hosts, standby)
        if cfg is not None and (cfg.get("lynxi_hosts") is not None or cfg.get("lynxi_standby") is not None):
            return cls.parse(cfg.get("lynxi_hosts"), cfg.get("lynxi_standby"), ("lynxi_hosts", "lynxi_standby"))
        return None

    # ------------------------------------------------------------------------------ device ids

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(h.address for h in self.hosts)

    @property
    def device_hosts(self) -> tuple[str, ...]:
        """The host of every device id."""
        return tuple(h.address for h in self.hosts for _ in range(h.total))

    @property
    def standby_ids(self) -> tuple[int, ...]:
        """Device ids declared standby."""
        out, base = [], 0
        for h in self.hosts:
            out += range(base + h.devices, base + h.total)
            base += h.total
        return tuple(out)

    def active_ids(self, address: str) -> tuple[int, ...]:
        """The active device ids of host ``address``."""
        base = 0
        for h in self.hosts:
            if h.address == address:
                return tuple(range(base, base + h.devices))
            base += h.total
        raise KeyError(address)

    @property
    def active(self) -> int:
        return sum(h.devices for h in self.hosts)

    def describe(self) -> str:
        """``10.0.0.1=8, 10.0.0.2=8 (+4 standby)``."""
        return ", ".join(f"{h.address}={h.devices}" + (f" (+{h.standby} standby)" if h.standby else "")
                         for h in self.hosts)


def _entries(value: Any, flag: str) -> dict[str, int]:
    """``{address: count}`` from ``A=N,B=M``, ``{A: N}``, ``{A: [ids]}`` or ``[(A, N)]``."""
    if value is None or value == "" or value == {} or value == []:
        return {}
    if isinstance(value, str):
        pairs = []
        for part in value.split(","):
            addr, sep, n = part.strip().partition("=")
            if not sep:
                raise ValueError(f"{flag} {value!r}: expected HOST=N[,HOST=N...] (N devices on host HOST), "
                                 f"got {part.strip()!r}")
            pairs.append((addr.strip(), n.strip()))
    elif isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise ValueError(f"{flag}={value!r}: expected {{'HOST': N, ...}} (or HOST=N,HOST=N)")
    out: dict[str, int] = {}
    for addr, n in pairs:
        try:
            ipaddress.ip_address(str(addr))
        except ValueError:
            raise ValueError(f"{flag} {addr}={n}: {addr!r} is not an IP address (hosts are named by the address "
                             "their Ray node has)") from None
        if isinstance(n, (list, tuple)):
            if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in n) or len(set(n)) != len(n):
                raise ValueError(f"{flag} {addr}={list(n)}: expected distinct non-negative device ids")
            count = len(n)
        else:
            try:
                count = int(n)
            except (TypeError, ValueError):
                count = -1
            if isinstance(n, bool) or (isinstance(n, float) and n != count):
                count = -1
        if count < (0 if flag.endswith("standby") else 1) or count > 4096:
            raise ValueError(f"{flag} {addr}={n}: expected a device count of {'0' if flag.endswith('standby') else '1'}"
                             "..4096")
        if addr in out:
            raise ValueError(f"{flag}: host {addr} is listed twice")
        out[str(addr)] = count
    return out


# ------------------------------------------------------------------------------------- costs

Endpoint = Optional[CellKey]          # None: the driver


def weighted_edges(plan: GridPlan) -> list[tuple[Endpoint, Endpoint, int]]:
    """``(src, dst, bytes per message)`` of every edge of ``plan`` (None: the driver)."""
    return [(e.src, e.dst, e.nbytes) for e in plan.edges]


def crossing_bytes(edges: Iterable[tuple[Endpoint, Endpoint, int]], host_of: Mapping[CellKey, str],
                   driver_host: str) -> int:
    """Bytes per message over edges whose two ends are on different hosts."""
    def h(k: Endpoint) -> str:
        return driver_host if k is None else host_of[k]
    return sum(w for a, b, w in edges if h(a) != h(b))


class _Search:
    """Cells to hosts under capacities, fewest crossing bytes (see the module doc)."""

    def __init__(self, keys: list[CellKey], edges: list[tuple[Endpoint, Endpoint, int]], caps: dict[str, int],
                 driver_host: str):
        self.keys, self.caps, self.driver = keys, caps, driver_host
        self.adj: dict[CellKey, list[tuple[Endpoint, int]]] = {k: [] for k in keys}
        for a, b, w in edges:
            if a is not None:
                self.adj[a].append((b, w))
            if b is not None:
                self.adj[b].append((a, w))

    def cost(self, where: dict[CellKey, str]) -> int:
        total = 0
        for k in self.keys:
            for other, w in self.adj[k]:
                if other is None:
                    total += 2 * w if where[k] != self.driver else 0   # driver edges counted once (below /2)
                elif where[k] != where[other]:
                    total += w
        return total // 2

    def _local(self, k: CellKey, host: str, where: dict[CellKey, str], skip: Optional[CellKey] = None,
               skip_host: Optional[str] = None) -> int:
        """Crossing bytes of ``k``'s edges if ``k`` were on ``host`` (``skip`` taken as on ``skip_host``)."""
        total = 0
        for other, w in self.adj[k]:
            oh = self.driver if other is None else (skip_host if other == skip else where[other])
            if oh != host:
                total += w
        return total

    def fill(self, order: list[CellKey], hosts: list[str]) -> dict[CellKey, str]:
        where, it = {}, iter(order)
        for h in hosts:
            for _ in range(self.caps[h]):
                k = next(it, None)
                if k is None:
                    return where
                where[k] = h
        return where

    def improve(self, where: dict[CellKey, str], passes: int = 50) -> dict[CellKey, str]:
        where = dict(where)
        used = {h: 0 for h in self.caps}
        for h in where.values():
            used[h] += 1
        hosts = list(self.caps)
        for _ in range(passes):
            better = False
            for k in self.keys:                                  # moves into free capacity
                here = where[k]
                now = self._local(k, here, where)
                best, to = 0, None
                for h in hosts:
                    if h != here and used[h] < self.caps[h]:
                        gain = now - self._local(k, h, where)
                        if gain > best:
                            best, to = gain, h
                if to is not None:
                    used[here] -= 1
                    used[to] += 1
                    where[k] = to
                    better = True
            for a, b in itertools.combinations(self.keys, 2):    # swaps between hosts
                ha, hb = where[a], where[b]
                if ha == hb:
                    continue
                before = self._local(a, ha, where) + self._local(b, hb, where)
                after = self._local(a, hb, where, b, ha) + self._local(b, ha, where, a, hb)
                if after < before:          # an edge between a and b crosses before and after: counted alike
                    where[a], where[b] = hb, ha
                    better = True
            if not better:
                break
        return where


def assign_hosts(plan: GridPlan, hosts: HostMap, driver_host: Optional[str] = None
                 ) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Device ids ``[replica][row][col]`` on ``hosts`` for the cells of ``plan`` (placed anywhere: only
    its cells and edge sizes are read), with the fewest bytes per sample crossing hosts (module doc).
    ``driver_host``: where the driver runs (default: the map's first host). ValueError (one line) when
    the hosts' active devices are fewer than the cells."""
    driver = driver_host or hosts.addresses[0]
    keys = [c.key for c in plan.cells]
    if hosts.active < len(keys):
        raise ValueError(f"{hosts.source} {hosts.describe()}: {hosts.active} active device(s), the grid "
                         f"{plan.rows}x{plan.cols} x {plan.replicas} replica(s) needs {len(keys)}")
    caps = {h.address: h.devices for h in hosts.hosts if h.devices}
    search = _Search(keys, weighted_edges(plan), caps, driver)
    first = [driver] if driver in caps else []
    rest = [h for h in caps if h != driver]
    orders = [first + list(p) for p in itertools.islice(itertools.permutations(rest), MAX_HOST_ORDERS)]
    fills = {
        "row-major": sorted(keys),
        "column-major": sorted(keys, key=lambda k: (k[0], k[2], k[1])),
        "column-snake": sorted(keys, key=lambda k: (k[0], k[2], k[1] if k[2] % 2 == 0 else -k[1])),
    }
    starts = sorted(((search.cost(w), i, w) for i, w in enumerate(search.fill(f, o) for f in fills.values()
                                                                 for o in orders)), key=lambda t: (t[0], t[1]))
    best = starts[0][2]
    if len(keys) <= MAX_SEARCH_CELLS:
        tried = [search.improve(w) for _, _, w in starts[:3]]
        best = min(tried + [best], key=search.cost)
    ids = {h.address: list(hosts.active_ids(h.address)) for h in hosts.hosts if h.devices}
    device: dict[CellKey, int] = {}
    for k in sorted(keys):
        device[k] = ids[best[k]].pop(0)
    return tuple(tuple(tuple(device[(k, g, s)] for s in range(plan.cols)) for g in range(plan.rows))
                 for k in range(plan.replicas))


# ------------------------------------------------------------------------------ re-placement

def replace_cells(plan: GridPlan, lost: Iterable[CellKey], free: Sequence[int], device_hosts: Mapping[int, str],
                  standby: Iterable[int] = ()) -> dict[CellKey, int]:
    """New device ids for the cells ``lost`` (their host is gone) among ``free`` device ids (alive,
    unused; ``device_hosts`` gives each one's host): standby devices first, then the device whose
    host makes the fewest bytes cross hosts given where the cell's neighbours are, heaviest cells
    first (ties: the lowest device id). ValueError when ``free`` holds fewer devices than ``lost``."""
    lost = sorted(lost)
    if len(free) < len(lost):
        raise ValueError(f"{len(lost)} cell(s) to re-place, {len(free)} free device(s)")
    spare = set(standby)
    where = {c.key: None for c in plan.cells}
    host_of_node = dict(plan.node_hosts)
    for c in plan.cells:
        where[c.key] = host_of_node.get(c.node, c.node)
    for k in lost:
        where[k] = None
    driver = host_of_node.get(plan.driver_node, plan.driver_node)
    edges = weighted_edges(plan)
    weight = {k: sum(w for a, b, w in edges if k in (a, b)) for k in lost}
    left = list(free)
    out: dict[CellKey, int] = {}
    for k in sorted(lost, key=lambda k: (-weight[k], k)):
        def cost(d: int) -> tuple[int, int, int]:
            h = device_hosts[d]
            crossing = 0
            for a, b, w in edges:
                if k not in (a, b):
                    continue
                other = b if a == k else a
                oh = driver if other is None else where.get(other)
                if oh is not None and oh != h:
                    crossing += w
            return (0 if d in spare else 1, crossing, d)
        d = min(left, key=cost)
        left.remove(d)
        out[k] = d
        where[k] = device_hosts[d]
    return out
