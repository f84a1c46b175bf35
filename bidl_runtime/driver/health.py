"""The driver's watch over its cells: who died, who raised, who froze, who is stuck, and why.

Three signals, read without blocking whenever the driver waits (``Monitor.check`` runs after every
bounded wait of the stream, so about every ``poll_s``):

- the cells' loops (Ray refs): a loop that ends with the actor's death is a **died** cell, one that
  raises its own error a **raised** cell; one that fails only because a neighbour's channel broke
  (PeerDied, ChannelClosed, ...) is a victim, not a cause;
- a heartbeat: every ``heartbeat_s`` each cell is pinged (``Cell.ping``, answered by another actor
  thread while the loop computes). A ping that fails is a **died** cell; a ping unanswered for
  ``deadline`` seconds is a **frozen** cell (SIGSTOP, a wedged process); an answer saying the cell
  has been inside one chunk for ``deadline`` seconds is a **stuck** cell;
- progress: no result and no cell finishing a chunk for twice the largest deadline while samples
  are in flight is a **stalled** replica (blamed on its cell with the least progress);
- the nodes: about every second (:class:`NodeWatch`) the raylet of each node that holds cells is
  probed (a TCP connect to its port, without blocking; a killed raylet refuses at once, while its
  cells' processes may go on answering, and Ray's node table says so only after some 15 s). A node
  whose raylet has refused for ``NODE_LOST_S`` (unreachable: ``NODE_UNREACHABLE_S``) is **lost**:
  :class:`NodeLost` names its address and the cells it took, the cells' processes on this machine are
  killed, and the run stops (a grid is not moved to other nodes).

``deadline = RuntimeConfig.hang_deadline(chunk_s) = max(hang_floor_s, hang_factor x chunk_s)``, with
``chunk_s`` the cell's own median chunk time from its last ping: derived from what the cell measured,
not a constant. A failure spreads (a dead cell's neighbours see a dead peer), so after a first sign in
a replica the monitor gives Ray up to ``health_grace_s`` to report the root cause and names it.
``check`` raises :class:`Trouble` with the replica and its :class:`Fault` list; the grid restarts
the faulty cells and replays (see ``Grid.recover``).
"""
from __future__ import annotations

import errno
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from bidl_runtime.errors import CellError, RunError
from bidl_runtime.plan.grid_plan import CellKey

if TYPE_CHECKING:  # pragma: no cover
    from .grid import Grid

ROOT_CAUSES = ("died", "raised", "frozen", "stuck", "stalled")
NODE_CHECK_S = 1.0         # a node's raylet is probed this often
NODE_LOST_S = 2.0          # refused (nothing listens: the raylet is gone) for this long: the node is lost
NODE_UNREACHABLE_S = 6.0   # no answer at all (the host or the network) for this long: lost too
REFUSED = "refuses connections (nothing listens on its port: the process is gone)"


class NodeLost(RunError):
    """A node's Ray (its raylet) is gone; the message names the node and the cells it took."""


@dataclass
class Fault:
    """One cell's failure: ``kind`` in died | raised | frozen | stuck | stalled | channel (a channel
    broke and no cell is to blame), ``cause`` the readable reason, ``at`` when it was detected
    (``perf_counter``)."""

    key: CellKey
    name: str
    kind: str
    cause: str
    at: float = field(default_factory=time.perf_counter)

    @property
    def restart(self) -> bool:
        """Whether the cell's process is replaced (a channel failure only rewires)."""
        return self.kind in ROOT_CAUSES


class Trouble(Exception):
    """Replica ``replica`` needs a restart: ``faults`` say which cells and why."""

    def __init__(self, replica: int, faults: list[Fault]):
        super().__init__("; ".join(f"{f.name}: {f.cause}" for f in faults))
        self.replica, self.faults = replica, faults


class _Watch:
    """What the monitor knows of one cell."""

    __slots__ = ("ping", "ping_at", "answer", "answer_at", "samples", "progress_at")

    def __init__(self, now: float):
        self.ping: Any = None          # outstanding ping ref
        self.ping_at = 0.0             # when it was sent
        self.answer: Optional[dict] = None
        self.answer_at = now
        self.samples = -1
        self.progress_at = now


class Monitor:
    """Heartbeats and loop watching for a grid's cells (one per run; ``track`` after a restart)."""

    def __init__(self, grid: "Grid"):
        self.grid = grid
        now = time.perf_counter()
        self.watch: dict[CellKey, _Watch] = {c.key: _Watch(now) for c in grid.plan.cells}
        self.hints: dict[int, str] = {}          # replica -> a driver-side channel error seen there
        self.progress_at = now                   # last result or finished chunk anywhere
        self.nodes: Optional[NodeWatch] = None   # the cells' nodes, found on the first check

    # ------------------------------------------------------------------------------ inputs

    def track(self, key: CellKey) -> None:
        """Forget what was known of cell ``key`` (a new actor, or a rewired one)."""
        self.watch[key] = _Watch(time.perf_counter())

    def hint(self, replica: int, what: str) -> None:
        """A channel error on the driver's end of ``replica`` (any thread may call it)."""
        self.hints.setdefault(replica, what)

    def result_arrived(self) -> None:
        self.progress_at = time.perf_counter()

    def rewired(self) -> None:
        """A replica was restarted: the stall clock starts over (the recovery itself made no results)."""
        self.progress_at = time.perf_counter()

    def deadline(self, key: CellKey) -> float:
        """Seconds of silence, or inside one chunk, after which cell ``key`` is hung."""
        a = self.watch[key].answer
        chunk_ms = a.get("chunk_ms") if a else None
        return self.grid.config.hang_deadline((chunk_ms or 0.0) / 1e3)

    # ------------------------------------------------------------------------------ checks

    def check(self, replicas: Optional[set[int]] = None, inflight: bool = True) -> None:
        """Raise :class:`Trouble` for the first replica (of ``replicas``, default all) with a failed
        cell; ``inflight``: samples are in the grid (a stall counts)."""
        want = set(range(self.grid.plan.replicas)) if replicas is None else replicas
        self.check_nodes()
        suspects = self._loop_failures(want) | self._ping_round(want) | {k for k in self.hints if k in want}
        if not suspects and inflight:
            stalled = self._stall(want)
            if stalled is not None:
                raise Trouble(stalled.key[0], [stalled])
        if not suspects:
            return
        replica = min(suspects)
        faults = self.diagnose(replica)
        self.hints.pop(replica, None)
        raise Trouble(replica, faults)

    def check_nodes(self) -> None:
        """Raise :class:`NodeLost` if a node holding cells lost its raylet (probes about every
        ``NODE_CHECK_S``, never blocking); its cells' processes on this machine are killed first."""
        if self.nodes is None:
            self.nodes = NodeWatch.of(self.grid)
        lost = self.nodes.poll()
        if lost is None:
            return
        node, why = lost
        cells = [c for c in self.grid.plan.cells if self.nodes.node_of(c.node) == node]
        if self.nodes.on_this_machine(node):
            for c in cells:
                pid = self.grid.pids.get(c.key)
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        names = ", ".join(c.name for c in cells) or "none"
        raise NodeLost(f"node {self.nodes.name(node)} lost its Ray: {why}; it took {len(cells)} cell(s): {names}; "
                       "the run stops (a grid is not moved to other nodes)")

    def _cells(self, replica: int) -> list:
        return [c for c in self.grid.plan.cells if c.replica == replica]

    def _loop_failures(self, replicas: set[int]) -> set[int]:
        """Replicas with a loop that ended in an error (a loop that returned was stopped: fine)."""
        import ray
        refs = [r for r, c in self.grid.loops.items() if c.replica in replicas]
        if not refs:
            return set()
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        out = set()
        for ref in done:
            if _loop_error(ref) is not None:
                out.add(self.grid.loops[ref].replica)
        return out

    def _ping_round(self, replicas: set[int]) -> set[int]:
        """Collect answered pings, send due ones; replicas with a died, frozen or stuck cell."""
        import ray
        now = time.perf_counter()
        hb = self.grid.config.heartbeat_s
        cells = [c for c in self.grid.plan.cells if c.replica in replicas]
        out = set()
        pending = {self.watch[c.key].ping: c for c in cells if self.watch[c.key].ping is not None}
        answered = set(ray.wait(list(pending), num_returns=len(pending), timeout=0)[0]) if pending else set()
        for c in cells:
            w = self.watch[c.key]
            if w.ping is not None and w.ping in answered:
                try:
                    a = ray.get(w.ping, timeout=1)
                except Exception:  # noqa: BLE001 - a failed ping: the actor is gone
                    out.add(c.replica)
                    continue
                w.answer, w.answer_at, w.ping = a, now, None
                if a["samples"] != w.samples:
                    w.samples, w.progress_at = a["samples"], now
                    self.progress_at = max(self.progress_at, now)
                if a.get("computing_s") is not None and a["computing_s"] > self.deadline(c.key):
                    out.add(c.replica)
            elif w.ping is not None and now - w.ping_at > self.deadline(c.key):
                out.add(c.replica)
            if w.ping is None and now - w.answer_at >= hb and c.key in self.grid.actors:
                w.ping, w.ping_at = self.grid.actors[c.key].ping.remote(), now
        return out

    def _stall(self, replicas: set[int]) -> Optional[Fault]:
        """No result and no finished chunk for twice the largest deadline: blame the replica holding
        the oldest sample in flight, on its cell with the least progress since the last check."""
        limit = 2 * max(self.deadline(k) for k in self.watch)
        quiet = time.perf_counter() - self.progress_at
        oldest = self.grid.oldest_inflight()
        if quiet < limit or oldest is None or oldest not in replicas:
            return None
        cells = self._cells(oldest)
        c = min(cells, key=lambda c: (self.watch[c.key].progress_at, c.row + c.col, c.row))
        return Fault(c.key, c.name, "stalled", f"no progress for {quiet:.0f} s (no result, no chunk finished "
                                                  f"anywhere; deadline {limit:.1f} s) with samples in flight")

    # --------------------------------------------------------------------------- diagnosis

    def diagnose(self, replica: int) -> list[Fault]:
        """The root causes in ``replica``: waits up to ``health_grace_s`` for Ray to report the death
        behind a broken channel (pinging the cells meanwhile), then names died, raised, stuck and
        frozen cells; if none, the first channel failure (``kind='channel'``)."""
        import ray
        self.check_nodes()   # no restart on a node that is gone
        rcfg = self.grid.config
        cells = self._cells(replica)
        start = time.perf_counter()
        settle: Optional[float] = None
        pings = {c.key: self.grid.actors[c.key].ping.remote() for c in cells if c.key in self.grid.actors}
        while True:
            faults, victims = self._classify(replica, pings)
            now = time.perf_counter()
            if faults and settle is None:
                settle = now + min(0.5, rcfg.health_grace_s)   # simultaneous failures: collect them all
            if (settle is not None and now >= settle) or now - start >= rcfg.health_grace_s:
                break
            refs = [r for r, c in self.grid.loops.items() if c.replica == replica] + list(pings.values())
            ray.wait(refs, num_returns=len(refs), timeout=0.1)
        if faults:
            return faults
        if victims:
            return victims[:1]
        hint = self.hints.get(replica, "a channel of the driver failed")
        c = cells[-1]
        return [Fault(c.key, c.name, "channel", hint)]

    def _classify(self, replica: int, pings: dict) -> tuple[list[Fault], list[Fault]]:
        import ray
        import ray.exceptions as rex
        faults: dict[CellKey, Fault] = {}
        victims: list[Fault] = []
        loops = {c.key: r for r, c in self.grid.loops.items() if c.replica == replica}
        for c in self._cells(replica):
            ref = loops.get(c.key)
            if ref is not None and ray.wait([ref], timeout=0)[0]:
                err = _loop_error(ref)
                if err is not None:
                    dead = isinstance(err, rex.RayActorError)
                    text = _error_text(err)
                    if dead:
                        faults[c.key] = Fault(c.key, c.name, "died", text)
                    elif _is_channel_failure(text):
                        victims.append(Fault(c.key, c.name, "channel", text))
                    else:
                        faults[c.key] = Fault(c.key, c.name, "raised", text)
                    continue
            p = pings.get(c.key)
            if p is not None and ray.wait([p], timeout=0)[0]:
                try:
                    a = ray.get(p, timeout=1)
                except Exception as e:  # noqa: BLE001
                    faults[c.key] = Fault(c.key, c.name, "died", _error_text(e))
                    continue
                if a.get("computing_s") is not None and a["computing_s"] > self.deadline(c.key):
                    faults[c.key] = Fault(c.key, c.name, "stuck",
                                          f"inside one chunk for {a['computing_s']:.1f} s "
                                          f"(deadline {self.deadline(c.key):.1f} s from its chunk time)")
                continue
            w = self.watch[c.key]
            silent = time.perf_counter() - w.ping_at
            if w.ping is not None and silent > self.deadline(c.key):
                faults[c.key] = Fault(c.key, c.name, "frozen",
                                      f"no answer to the heartbeat for {silent:.1f} s (deadline "
                                      f"{self.deadline(c.key):.1f} s from its chunk time): frozen or wedged")
        return sorted(faults.values(), key=lambda f: f.key), victims


def on_this_machine(addr: str) -> bool:
    """Whether ``addr`` (a node's address) is this machine's: its processes can be killed from here."""
    if addr.startswith("127.") or addr == "localhost":
        return True
    try:
        return addr in {i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False


class NodeWatch:
    """Whether the raylets of a plan's nodes still listen: ``poll`` probes each one about every
    ``every_s`` with a non-blocking TCP connect (a refusal is immediate, a pending connect is looked
    at on the next poll) and returns the first node that has failed long enough (see the module doc)."""

    def __init__(self, raylets: dict[str, tuple[str, int]], every_s: float = NODE_CHECK_S, local: str = ""):
        self.raylets = raylets                    # node id -> (address, raylet port)
        self.local = local                        # the driver's node id (plan cells on 'local' run there)
        self.every_s = every_s
        self.pending: dict[str, tuple[socket.socket, float]] = {}
        self.failing: dict[str, tuple[float, str]] = {}   # node -> (first failure, why)
        self.last = 0.0

    @classmethod
    def of(cls, grid: Any) -> "NodeWatch":
        """The watch of ``grid``'s nodes (none watched without a connected Ray)."""
        import ray
        if not ray.is_initialized():
            return cls({})
        local = ray.get_runtime_context().get_node_id()
        want = {local if c.node == "local" else c.node for c in grid.plan.cells}
        hosts = getattr(grid, "hosts", None)   # the other nodes are the host watch's: it re-places their cells
        if hosts is not None:
            hosts.start()
            want -= set(hosts.nodes)
        raylets = {n["NodeID"]: (n["NodeManagerAddress"], int(n["NodeManagerPort"])) for n in ray.nodes()
                   if n["NodeID"] in want and n.get("Alive") and n.get("NodeManagerPort")}
        return cls(raylets, local=local)

    def node_of(self, plan_node: str) -> str:
        return self.local if plan_node == "local" else plan_node

    def name(self, node: str) -> str:
        """``127.0.0.1:41234 (Ray node 3f94f0e0)``: the raylet's address and the node id's start."""
        addr, port = self.raylets.get(node, ("?", 0))
        return f"{addr}:{port} (Ray node {node[:8]})"

    def on_this_machine(self, node: str) -> bool:
        """Whether the node runs on this machine (its cells' processes can be killed from here)."""
        return on_this_machine(self.raylets.get(node, ("",))[0])

    def poll(self, now: Optional[float] = None) -> Optional[tuple[str, str]]:
        """``(node, why)`` for a node lost by now, else None (probes when due; never blocks)."""
        now = time.perf_counter() if now is None else now
        for node in list(self.pending):
            self._collect(node, now)
        if now - self.last >= self.every_s:
            self.last = now
            for node, addr in self.raylets.items():
                if node not in self.pending:
                    self._probe(node, addr, now)
        for node, (since, why) in self.failing.items():
            limit = NODE_LOST_S if why.startswith(REFUSED) else NODE_UNREACHABLE_S
            if now - since >= limit:
                return node, f"its raylet {why} for {now - since:.1f} s"
        return None

    def _probe(self, node: str, addr: tuple[str, int], now: float) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in addr[0] else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            self.pending[node] = (s, now)
            return
        s.close()
        self._result(node, err, now)

    def _collect(self, node: str, now: float) -> None:
        s, sent = self.pending[node]
        _, writable, _ = select.select([], [s], [], 0)
        if writable:
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        elif now - sent >= max(2 * self.every_s, 1.0):
            err = errno.ETIMEDOUT
        else:
            return
        s.close()
        del self.pending[node]
        self._result(node, err, sent)

    def _result(self, node: str, err: int, now: float) -> None:
        """Record a probe's outcome (``now``: when it was sent)."""
        if err == 0:
            self.failing.pop(node, None)
            return
        why = REFUSED if err == errno.ECONNREFUSED else f"does not answer ({os.strerror(err)})"
        since = self.failing.get(node, (now, why))[0]
        self.failing[node] = (since, why)


def _loop_error(ref) -> Optional[BaseException]:
    """The error a finished loop ref holds (None if it returned)."""
    import ray
    try:
        ray.get(ref, timeout=1)
        return None
    except Exception as e:  # noqa: BLE001
        return e


def _error_text(e: BaseException) -> str:
    """The readable part of a Ray error raised for a cell: its CellError, or that it died."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, CellError):
        return str(cause)
    import ray.exceptions as rex
    if isinstance(e, rex.RayActorError):
        return "the actor died (its process exited or was killed)"
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _is_channel_failure(text: str) -> bool:
    """A failure that a neighbour's death causes (not a root cause)."""
    return any(k in text for k in ("PeerDied", "ChannelClosed", "ChannelTimeout", "ChannelError", "peer is gone",
                                   "sender process is gone", "receiver process is gone"))
