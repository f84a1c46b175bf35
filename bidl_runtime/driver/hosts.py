"""Losing a host: the driver's watch over the other hosts' Ray nodes, and the re-placement of a lost
host's cells on the devices that remain.

    watch = HostWatch(grid)      # the grid makes one; Grid.check calls watch.check()
    watch.check()                # raises HostLost for a lost host holding cells
    watch.heal(trouble)          # Grid.recover hands it a HostLost: re-place, ship, rewire, replay

**Detection.** A thread probes, every ``host_probe_s``, the raylet port of every node of the plan but
the driver's (a TCP connect: refused once the host's processes are gone, unanswered once its link is
down), and asks Ray every few probes which nodes it holds alive. A node that has failed every probe
for ``host_loss_s``, or that Ray reports dead, is **lost** (a blip shorter than that is forgotten).
Ray's own verdict takes its health checks (tens of seconds); the probe names a killed host in about
``host_loss_s`` plus a probe, and a host cut off in about one probe timeout more. When the monitor
names a failed cell first (its neighbours see a dead peer at once), :meth:`HostWatch.settle` probes
that replica's nodes on the spot and waits for the verdict before anything tries to restart a cell on
a host that is gone.

**Healing** (:meth:`HostWatch.heal`): every cell of the lost host (of every replica) gets a device on
another host (:func:`~bidl_runtime.plan.hosts.replace_cells`: declared standby devices first, whose
idle actors were started beforehand; then free devices, next to each cell's neighbours); the plan is
rebuilt with the cells moved (:func:`~bidl_runtime.plan.place.move_cells`), their programs shipped to
their new nodes and resealed there, the **grid epoch** raised; the replicas holding those cells are
paused, their other cells stop their loops and take the new plan (``Cell.update``: no reload), the
moved cells start and load their programs, the replicas are rewired (every channel new, at the new
epoch) and every in-flight sample of theirs is replayed from its first time slice (the stream's
ledger). Each replica's entry in the run's restarts names the host, the cells moved and where to.
Without enough free devices the run stops (:class:`RunError`): one line naming the host and how many
samples finished.

**Fencing.** The lost host is never used again by this grid, even if it comes back. Its cells are
killed through Ray at once (which takes effect when, and if, the host is reachable again); their
channels' peers are gone, and every channel of the rewired replicas carries the new epoch, so a
stale cell that returns after a partition is refused at its hello (``stats.fenced``) and can never
deliver a result. The watch keeps probing a lost host: when it answers again, its stale cells are
killed once more and the restart entry records when it came back.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from bidl_runtime.cell.pool import kill, new_actor
from bidl_runtime.cluster.ship import ship_programs
from bidl_runtime.errors import RunError
from bidl_runtime.plan.grid_plan import CellKey, GridPlan
from bidl_runtime.plan.hosts import replace_cells
from bidl_runtime.plan.place import move_cells

from .health import Fault, NodeLost, Trouble, on_this_machine

if TYPE_CHECKING:  # pragma: no cover
    from .grid import Grid

RAY_VIEW_EVERY = 4          # probes between two looks at Ray's node table
REFUSED = "refuses connections"   # the host answers (its kernel does), its Ray node does not


class HostLost(Trouble):
    """Node(s) ``nodes`` (hosts ``hosts``) are lost with the cells ``faults`` name; ``replicas`` hold them.
    ``at``: when the verdict fell; ``since``: the first failed probe (``perf_counter``)."""

    def __init__(self, nodes: list[str], hosts: list[str], why: str, faults: list[Fault], at: float, since: float):
        super().__init__(min(f.key[0] for f in faults), faults)
        self.nodes, self.hosts, self.why, self.at, self.since = nodes, hosts, why, at, since
        self.replicas = sorted({f.key[0] for f in faults})


@dataclass
class _Node:
    """What the watch knows of one node."""

    node: str
    host: str
    port: int
    failing_since: Optional[float] = None
    why: str = ""
    lost_at: Optional[float] = None
    lost_silent: bool = False                            # lost without an answer (cut off, not killed)
    healed: bool = False
    back_at: Optional[float] = None
    stale: list = field(default_factory=list)          # (cell name, actor) fenced with it


def probe(host: str, port: int, timeout: float) -> Optional[str]:
    """Why ``host:port`` does not accept a TCP connection within ``timeout`` (None: it does)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return None
    except ConnectionRefusedError:
        return f"its Ray node (raylet {host}:{port}) {REFUSED}: its processes are gone"
    except (TimeoutError, socket.timeout):
        return f"its Ray node (raylet {host}:{port}) does not answer: the host is down or cut off"
    except OSError as e:
        return f"its Ray node (raylet {host}:{port}) is unreachable ({e.strerror or e})"


class HostWatch:
    """Probes the other hosts' nodes, names lost ones, re-places their cells (see the module doc)."""

    def __init__(self, grid: "Grid"):
        self.grid = grid
        self.nodes: dict[str, _Node] = {}
        self.spares: dict[int, Any] = {}              # standby device id -> its idle cell actor
        self.spare_pings: dict[int, Any] = {}         # standby device id -> its first ping (answered: ready)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.entries: dict[str, list[dict]] = {}      # lost node -> the restart entries of its heal

    # ------------------------------------------------------------------------------ watching

    @property
    def config(self):
        return self.grid.config

    def _timeout(self) -> float:
        return max(0.2, min(1.0, self.config.host_loss_s / 2))

    def start(self) -> None:
        """Look up the nodes to watch (every node of the plan's devices but the driver's), start the
        probing thread and the standby devices' idle actors (once; nothing to do on one node)."""
        if self.thread is not None:
            return
        import ray
        plan = self.grid.plan
        mine = set(plan.device_nodes) - {plan.driver_node, "local"}
        if not mine:
            self.thread = threading.current_thread()   # nothing to watch: a grid on one node
            return
        alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        now = time.perf_counter()
        for node in sorted(mine):
            n = alive.get(node)
            if n is None:
                self.nodes[node] = _Node(node, plan.host(node), 0, now, "Ray reports its node dead", now)
            else:
                self.nodes[node] = _Node(node, n.get("NodeManagerAddress", plan.host(node)),
                                         int(n.get("NodeManagerPort", 0)))
        self.start_spares()
        self.thread = threading.Thread(target=self._run, name="bidl-hosts", daemon=True)
        self.thread.start()

    def start_spares(self) -> None:
        """An idle cell actor per unused standby device of a grid that spans several nodes, the
        driver's included (its process starts now, beside the grid's cells, so that a lost host's cells
        take over in the time it takes to load their programs); not on a node known to be lost."""
        plan = self.grid.plan
        if len(set(plan.device_nodes) - {"local"}) < 2:
            return                                   # one node: no host to lose but the driver's own
        used = {c.device for c in plan.cells}
        for d in plan.standby:
            node = plan.device_nodes[d]
            known = self.nodes.get(node)
            if d not in used and d not in self.spares and (known is None or known.lost_at is None):
                self.spares[d] = new_actor(f"spare@dev{d}", node, self.config.actor_gpus())
                self.spare_pings[d] = self.spares[d].ping.remote()

    def _run(self) -> None:
        import ray
        rounds = 0
        while not self.stop.wait(self.config.host_probe_s):
            rounds += 1
            dead: set[str] = set()
            if rounds % RAY_VIEW_EVERY == 0:
                try:
                    dead = {n["NodeID"] for n in ray.nodes() if not n.get("Alive")}
                except Exception:  # noqa: BLE001 - the GCS is busy: the probes still decide
                    pass
            for n in list(self.nodes.values()):
                t = time.perf_counter()
                why = "Ray reports its node dead" if n.node in dead else probe(n.host, n.port, self._timeout())
                self._note(n, why, t)

    def _note(self, n: _Node, why: Optional[str], t: float) -> None:
        """Record one probe of node ``n`` started at ``t`` (``why``: its failure, None: answered)."""
        with self.lock:
            now = time.perf_counter()
            answers = why is None or REFUSED in why          # the host itself is reachable
            if n.lost_at is not None and n.back_at is None and (why is None or (n.lost_silent and answers)):
                n.back_at = now                              # a cut-off host is back (or a killed one restarted)
                self._fence_again(n, why is None)
            if why is None:
                n.failing_since, n.why = None, ""
                return
            if n.failing_since is None:
                n.failing_since = t
            n.why = why
            if n.lost_at is None and (why.startswith("Ray reports") or now - n.failing_since >= self.config.host_loss_s):
                n.lost_at, n.lost_silent = now, not answers

    def _fence_again(self, n: _Node, node_alive: bool) -> None:
        """A lost host answers again (a partition healed): kill its stale cells once more and note it.
        ``node_alive``: its Ray node answers too (else Ray declared it dead meanwhile and its raylet
        exited on return, taking the cells with it)."""
        for _, actor in n.stale:
            kill(actor)
        for entry in self.entries.get(n.node, []):
            entry["fenced"] = {"host": n.host, "back_after_s": round(n.back_at - n.lost_at, 3),
                               "stale_cells": [name for name, _ in n.stale], "killed": True,
                               "ray_node": "alive: its stale cells killed through Ray" if node_alive else
                                           "gone: Ray had declared it dead, its raylet exited with its cells"}

    def suspects(self, replica: Optional[int] = None) -> list[str]:
        """Nodes holding cells (of ``replica``) whose last probe failed or that are lost, unhealed."""
        plan = self.grid.plan
        nodes = {c.node for c in plan.cells if replica is None or c.replica == replica}
        with self.lock:
            return [n.node for n in self.nodes.values() if n.node in nodes and not n.healed
                    and (n.failing_since is not None or n.lost_at is not None)]

    def check(self) -> None:
        """Raise :class:`HostLost` when a node holding cells is lost (all such nodes at once)."""
        self.start()
        with self.lock:
            lost = [n for n in self.nodes.values() if n.lost_at is not None and not n.healed]
        if not lost:
            return
        plan = self.grid.plan
        nodes = {n.node for n in lost}
        faults = [Fault(c.key, c.name, "host", f"host {plan.host(c.node)} lost: {self.nodes[c.node].why}",
                        self.nodes[c.node].lost_at) for c in plan.cells if c.node in nodes]
        if not faults:                # only spare devices there: nothing to move, never used again
            with self.lock:
                for n in lost:
                    n.healed = True
            return
        first = min(lost, key=lambda n: n.lost_at)
        raise HostLost(sorted(nodes), sorted({n.host for n in lost}), first.why, faults, first.lost_at,
                       min(n.failing_since or n.lost_at for n in lost))

    def settle(self, trouble: Trouble) -> Optional[HostLost]:
        """Before a replica is restarted: probe its cells' nodes now, and where one fails, wait (up to
        ``host_loss_s`` and a probe) for the verdict. The :class:`HostLost` to heal instead, or None."""
        if isinstance(trouble, HostLost):
            return trouble
        self.start()
        plan = self.grid.plan
        mine = {c.node for c in plan.cells if c.replica == trouble.replica}
        watched = [n for n in self.nodes.values() if n.node in mine and not n.healed]
        for n in watched:
            if n.lost_at is None:
                self._note(n, probe(n.host, n.port, self._timeout()), time.perf_counter())
        deadline = time.perf_counter() + self.config.host_loss_s + self._timeout() + self.config.host_probe_s
        while self.suspects(trouble.replica) and time.perf_counter() < deadline:
            try:
                self.check()
            except HostLost as lost:
                return lost
            time.sleep(min(0.1, self.config.host_probe_s))
        try:
            self.check()
        except HostLost as lost:
            return lost
        return None

    # ------------------------------------------------------------------------------- healing

    def free_devices(self, plan: GridPlan, lost: set[str]) -> list[int]:
        """Device ids on nodes that are neither lost nor failing, used by no cell (standby included)."""
        used = {c.device for c in plan.cells}
        with self.lock:
            bad = set(lost) | {n.node for n in self.nodes.values()
                               if n.lost_at is not None or n.failing_since is not None}
        return [d for d, node in enumerate(plan.device_nodes) if d not in used and node not in bad]

    def heal(self, t: HostLost) -> None:
        """Re-place the cells of the lost host(s) ``t`` names, rewire their replicas and replay their
        in-flight samples (see the module doc). RunError (one line) when there is no room for them."""
        import ray
        g, rcfg = self.grid, self.grid.config
        plan = g.plan
        lost_nodes = set(t.nodes)
        moving = [c for c in plan.cells if c.node in lost_nodes]
        host = ", ".join(t.hosts)
        done = g.stream.collected + g.stream.resumed if g.stream is not None else 0
        if not g.owned:
            raise RunError(f"host {host} lost ({t.why}) with {len(moving)} cell(s): the grid belongs to another "
                           f"driver (--keep-alive), which re-places nothing for an attached run; {done} sample(s) "
                           "finished")
        free = self.free_devices(plan, lost_nodes)
        if len(free) < len(moving):
            self._kill_here(moving)
            raise NodeLost(f"host {host} lost ({t.why}): its {len(moving)} cell(s) cannot be re-placed "
                           f"({', '.join(c.name for c in moving)}), the other hosts have {len(free)} free device(s) "
                           f"(declare standby devices with --standby, or give the hosts more with --hosts); "
                           f"{done} sample(s) finished")
        steps = {"start": time.perf_counter()}
        moves = replace_cells(plan, [c.key for c in moving], free, {d: plan.host(plan.device_nodes[d]) for d in free},
                              plan.standby)
        replicas = set(t.replicas)
        replayed = {k: g.stream.pause(k) for k in sorted(replicas)} if g.stream is not None else {}
        steps["paused"] = time.perf_counter()
        staying = [c for c in plan.cells if c.replica in replicas and c.node not in lost_nodes]
        stuck = self._stop_loops(replicas, lost_nodes)
        steps["stopped"] = time.perf_counter()
        with self.lock:
            for c in moving:
                self.nodes[c.node].stale.append((c.name, g.actors.get(c.key)))
            for n in lost_nodes:
                self.nodes[n].healed = True
        for c in moving:
            kill(g.actors.pop(c.key, None))
            g.pids.pop(c.key, None)
        g.config = rcfg.replace(epoch=rcfg.epoch + 1)            # every channel wired from now on: the new epoch
        new = ship_programs(move_cells(plan, moves, rcfg.transport, rcfg.backend), only=moves)
        g.plan = new
        steps["shipped"] = time.perf_counter()
        pings = [self.spare_pings.pop(d) for d in moves.values() if d in self.spare_pings]
        ready = len(ray.wait(pings, num_returns=len(pings), timeout=0)[0]) if pings else 0
        spares = {"used": len(pings), "ready": ready}   # a spare not ready yet is still starting its process
        for key, d in moves.items():
            spare = self.spares.pop(d, None)
            c = new.cell(*key)
            g.actors[key] = spare if spare is not None else new_actor(c.name, c.node, rcfg.actor_gpus())
        restart = sorted(set(moves) | stuck)
        for key in stuck:                                          # did not stop: replaced where it is
            kill(g.actors.get(key))
            c = new.cell(*key)
            g.actors[key] = new_actor(c.name, c.node, rcfg.actor_gpus())
        try:
            ray.get([g.actors[c.key].update.remote(g.spec_of(c.key)) for c in staying if c.key not in stuck],
                    timeout=rcfg.start_timeout_s)
            g._configure(restart)
            steps["configured"] = time.perf_counter()
            for k in sorted(replicas):
                g._wire({k}, fresh=False)
            steps["wired"] = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - the run cannot go on without these cells
            raise RunError(f"host {host} lost ({t.why}): re-placing its cells failed: {_text(e)}") from None
        g.monitor.rewired()
        for k in sorted(replicas):
            if g.stream is not None:
                g.stream.resume(k)
        now = time.perf_counter()
        entries = []
        for k in sorted(replicas):
            entry = {
                "replica": k, "host": host, "cause": t.why,
                "cells": [{"cell": plan.cell(*key).name, "kind": "host", "cause": f"host {host} lost: {t.why}",
                           "restarted": True, "moved_to": new.cell(*key).name,
                           "host_now": new.host(new.cell(*key).node)} for key in sorted(moves) if key[0] == k],
                "replayed": replayed.get(k, []), "detected_at": t.at, "rewired_at": now,
                "detected_after_s": round(t.at - g._t_run, 3), "rewired_s": round(now - t.at, 3),
                "detected_wall": time.time() - (time.perf_counter() - t.at),   # epoch seconds, for other clocks
                "first_failed_probe_s": round(t.since - t.at, 3), "spares": spares,
                "streaming_again_at": None, "streaming_again_s": None, "epoch": g.config.epoch,
                "timeline_s": {name: round(v - t.at, 3) for name, v in steps.items()}}
            entries.append(entry)
            g.restarts.append(entry)
        for n in lost_nodes:
            self.entries[n] = entries
        to = sorted({e["host_now"] for entry in entries for e in entry["cells"]})
        say(f"host {host} lost ({t.why}): {len(moves)} cell(s) re-placed on {', '.join(to)} "
            f"({spares['ready']}/{spares['used']} standby cells ready), "
            f"{sum(len(v) for v in replayed.values())} in-flight sample(s) replayed")

    def _kill_here(self, cells: list) -> None:
        """SIGKILL the processes of ``cells`` that run on this machine (a lost node's raylet no longer
        stops its workers; through Ray they could not be reached)."""
        for c in cells:
            pid = self.grid.pids.get(c.key)
            if pid and on_this_machine(self.nodes[c.node].host):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    def _stop_loops(self, replicas: set[int], lost: set[str]) -> set[CellKey]:
        """Abort the loops of ``replicas`` on the remaining nodes and forget every loop of theirs;
        the cells that did not stop in time (to be replaced where they are)."""
        import ray
        g = self.grid
        refs = {r: c for r, c in g.loops.items() if c.replica in replicas}
        alive = [r for r, c in refs.items() if c.node not in lost]
        aborts = [g.actors[c.key].abort.remote() for c in refs.values() if c.node not in lost and c.key in g.actors]
        bound = max(2.0, 10 * self.config.poll_s)
        _, stuck = ray.wait(alive + aborts, num_returns=len(alive) + len(aborts), timeout=bound) if alive else ([], [])
        for r in refs:
            g.loops.pop(r, None)
        return {refs[r].key for r in stuck if r in refs}

    # ------------------------------------------------------------------------------- teardown

    def close(self) -> None:
        """Stop probing; kill the idle standby actors and the fenced cells (best effort)."""
        self.stop.set()
        if self.thread is not None and self.thread is not threading.current_thread() and self.thread.is_alive():
            self.thread.join(timeout=2 * self._timeout() + self.config.host_probe_s)
        for a in self.spares.values():
            kill(a)
        self.spares, self.spare_pings = {}, {}
        for n in self.nodes.values():
            for _, actor in n.stale:
                kill(actor)


def say(line: str) -> None:
    """A line on stderr that does not break the run's progress bar."""
    from tqdm import tqdm
    tqdm.write(line, file=sys.stderr)


def _text(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
