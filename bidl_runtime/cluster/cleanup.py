"""What dead runs of this user leave behind on this machine, found and removed: Ray processes whose
cluster is gone, and private token directories whose driver is gone.

    done = cleanup()            # bidl-run does it at its start (cheap); ``bidl-run --cleanup`` alone
    print(done.line())

A driver killed with SIGKILL takes its GCS and raylet with it, but the raylet's dashboard and
runtime-env agents stay, orphaned, holding loopback ports for minutes; its ``bidl-auth-*`` token
directory stays in the temp dir. Every Ray process holds files of its session directory
(``<temp>/session_<date>_<time>_<us>_<pid>/logs/...``), which names the cluster it belongs to. A
process is a **dead run's** when:

- it belongs to this user (others' processes are never looked at further);
- its session has no live ``gcs_server`` and no live ``raylet`` (a live cluster, this user's or not,
  always has one of them on each of its nodes);
- the process that created the session (the pid at the end of its name, started before it) is gone.

Such processes get SIGTERM, then SIGKILL after a grace. A token directory (``bidl-auth-*`` in
``$RAY_TMPDIR`` or the temp dir) is stale when its ``owner`` file (written by :func:`claim_token_dir`)
names a process that is gone. No torch, no Ray: /proc only.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable, Optional

from bidl_runtime.cluster.ray_cluster import sweep_private
from bidl_runtime.processes import alive

SESSION = re.compile(r"(.*/session_(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)_\d+_(\d+))/(?:logs|sockets|runtime_resources)(?:/|$)")
CLUSTER_PROCESSES = ("gcs_server", "raylet")   # a session with one of these alive is a live cluster
TOKEN_PREFIX = "bidl-auth-"
OWNER = "owner"                                # in a token dir: "<pid> <start ticks>" of the driver that made it


@dataclass(frozen=True)
class RayProcess:
    """One process of a Ray session on this machine."""

    pid: int
    name: str        # /proc comm: gcs_server, raylet, ray::DashboardAgent, ray::Cell, python, ...
    session: str     # the session directory


@dataclass
class Cleanup:
    """What :func:`cleanup` removed: ``processes`` per dead session, ``token_dirs``."""

    processes: dict[str, list[RayProcess]] = field(default_factory=dict)
    token_dirs: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.processes and not self.token_dirs

    def line(self) -> str:
        """One line saying what was removed (or that nothing was)."""
        if self.empty:
            return "cleanup: no orphaned Ray processes or stale token directories of dead runs"
        parts = []
        if self.processes:
            procs = [p for ps in self.processes.values() for p in ps]
            names = sorted({p.name for p in procs})
            parts.append(f"{len(procs)} orphaned Ray process(es) ({', '.join(names)}) of "
                         f"{len(self.processes)} dead run(s) ({', '.join(Path(s).name for s in self.processes)})")
        if self.token_dirs:
            parts.append(f"{len(self.token_dirs)} stale token director{'y' if len(self.token_dirs) == 1 else 'ies'} "
                         f"({', '.join(self.token_dirs)})")
        return "cleanup: removed " + " and ".join(parts)


# ------------------------------------------------------------------------------ /proc

def _own(pid: int, uid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == uid
    except OSError:
        return False


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _session_of(pid: int) -> Optional[str]:
    """The Ray session directory whose files process ``pid`` holds, or that its command line names
    (a process just started); None: not a Ray process."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            m = SESSION.match(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if m:
            return m.group(1)
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for a in args:
        m = SESSION.search(a.split("=", 1)[-1])
        if m:
            return m.group(1)
    return None


def _creator(session: str) -> int:
    """The pid at the end of a session directory's name: the process that started its cluster."""
    return int(SESSION.match(session + "/logs/").group(3))


def start_time(pid: int) -> Optional[float]:
    """Epoch time process ``pid`` started (None: gone)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(ln.split()[1]) for ln in Path("/proc/stat").read_text().splitlines()
                    if ln.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def ray_processes(uid: Optional[int] = None) -> list[RayProcess]:
    """This user's processes (``uid``, default ours) that belong to a Ray session, this one excluded."""
    uid = os.getuid() if uid is None else uid
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid() or not _own(int(d), uid):
            continue
        session = _session_of(int(d))
        if session is not None:
            out.append(RayProcess(int(d), _name(int(d)), session))
    return out


def _creator_alive(session: str) -> bool:
    """Whether the process that created ``session`` runs (the pid in its name, started no later than it)."""
    m = SESSION.match(session + "/logs/")
    pid = _creator(session)
    if not alive(pid):
        return False
    started = start_time(pid)
    try:
        made = datetime.strptime(m.group(2), "%Y-%m-%d_%H-%M-%S").timestamp()
    except ValueError:
        return True
    return started is None or started <= made + 1.0   # a later process with the same pid is not its creator


def dead_runs(procs: Iterable[RayProcess]) -> dict[str, list[RayProcess]]:
    """The processes of sessions that have no live cluster process and no live creator."""
    by_session: dict[str, list[RayProcess]] = {}
    for p in procs:
        by_session.setdefault(p.session, []).append(p)
    return {s: ps for s, ps in by_session.items()
            if not any(p.name in CLUSTER_PROCESSES for p in ps) and not _creator_alive(s)}


def reap(pids: Iterable[int], grace_s: float = 1.0) -> None:
    """SIGTERM ``pids``, SIGKILL those still running after ``grace_s``."""
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if alive(p)]
            time.sleep(0.05)
        if not pids:
            return


def descendants(root: int) -> set[int]:
    """The processes below ``root`` (children, their children, ...), from /proc."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out: set[int] = set()
    todo = list(kids.get(root, []))
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += kids.get(p, [])
    return out


def reap_own(grace_s: float = 2.0) -> set[int]:
    """After this process shut down the cluster it started: wait up to ``grace_s`` for its
    descendants and the processes of the sessions it created to exit, then remove those left (the
    agents of a raylet that died before them, what a start cut short had not handed to Ray yet)."""
    me = os.getpid()
    deadline = time.monotonic() + grace_s
    while True:
        left = {p for p in descendants(me) | {p.pid for p in ray_processes() if _creator(p.session) == me}
                if alive(p)}
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    reap(left)
    return left


# ------------------------------------------------------------------------------ token dirs

def token_base() -> Path:
    """Where :mod:`bidl_runtime.cluster.ray_cluster` makes token directories."""
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())


def claim_token_dir() -> Optional[Path]:
    """Write this process as the owner of the token directory it uses (``RAY_AUTH_TOKEN_PATH`` in a
    ``bidl-auth-*`` directory of ours without an owner yet), so that a later cleanup can tell when
    its driver is gone; call it only for a directory this process made (one inherited from a parent
    lives as long as the parent). Returns the directory claimed."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not path:
        return None
    d = Path(path).parent
    if not d.name.startswith(TOKEN_PREFIX) or (d / OWNER).exists():
        return None
    try:
        if d.stat().st_uid != os.getuid():
            return None
        (d / OWNER).write_text(f"{os.getpid()} {start_time(os.getpid()) or 0.0:.2f}\n")
    except OSError:
        return None
    return d


def _owner_gone(d: Path) -> bool:
    try:
        pid_text, started = (d / OWNER).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False     # no owner recorded: not ours to judge
    now = start_time(pid)
    return now is None or abs(now - float(started)) > 1.0


def stale_token_dirs(base: Optional[Path] = None) -> list[Path]:
    """This user's ``bidl-auth-*`` directories whose owner process is gone."""
    base = base or token_base()
    try:
        dirs = [d for d in base.iterdir() if d.name.startswith(TOKEN_PREFIX)]
    except OSError:
        return []
    out = []
    for d in dirs:
        try:
            mine = d.is_dir() and not d.is_symlink() and d.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and _owner_gone(d):
            out.append(d)
    return out


def cleanup() -> Cleanup:
    """Remove what dead runs of this user left: orphaned Ray processes, stale token directories."""
    done = Cleanup(processes=dead_runs(ray_processes()))
    reap([p.pid for ps in done.processes.values() for p in ps])
    for d in stale_token_dirs():
        shutil.rmtree(d, ignore_errors=True)
        done.token_dirs.append(str(d))
    done.token_dirs += sweep_private()   # a killed run's private Ray dir: its token and sessions
    return done
