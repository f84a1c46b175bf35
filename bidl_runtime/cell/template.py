"""Cell processes forked from a template process that has torch and the cell code loaded.

Every cell is a Ray actor in a Ray worker process of its own: a cell's fault, restart or SIGKILL
stays its own. A fresh Ray worker process imports Ray, torch and the cell code: about 3 CPU seconds
each, most of a grid's start-up when six cells start on two cores. A template takes most of that
out of every worker:

    template = CellTemplate.for_cells()     # torch and the cell code, before Ray is imported
    ...                                     # the driver imports the rest meanwhile
    with template.workers():                # while the embedded cluster starts
        start_local(...)                    # bidl_runtime.cluster.ray_cluster
    ...                                     # every Ray worker of that node is forked from the template
    template.close()                        # (also at exit; it dies with the driver in any case)

How: Ray's raylet starts a worker process with the Python worker command it was given when the node
started, ``sys.executable default_worker.py ARGS``. ``workers()`` points ``sys.executable`` at a
launcher script while the node starts. For that command the launcher runs
:mod:`bidl_runtime.cell.template_client` (standard library only, milliseconds), which hands the
command, its environment, working directory and standard streams to the template over a Unix socket
in a private directory (0700; the template serves its own user only); the template forks a child
that becomes the worker (``default_worker.py`` run as ``__main__`` with those arguments, environment,
directory and streams) and reports its exit status back; the client stands in for it (signals passed
on). A worker whose client dies is killed; the template dies with the driver, and its workers with
it. Every other command (Ray's own services, a worker with a runtime env), and every failure to reach
the template, runs the real interpreter, as before.

The template is forked from the driver once it has imported torch and the cell code (``first``:
it needs them too, so they cost nothing more) and before it imports Ray: Ray reads its settings from
the environment once, when it is imported, and the raylet gives each worker its own
(``RAY_JOB_ID``...), so each worker imports Ray itself (about half a CPU second), after taking its
environment. The template then imports Ray's third-party dependencies (:data:`PRELOAD`) on the
second core while the driver imports Ray and the rest. It never computes (an OpenMP pool does not
survive a fork) and never imports Ray; the fork is refused while another Python thread runs
(native ones, like OpenBLAS's pool, survive a fork).
"""
from __future__ import annotations

import array
import atexit
import contextlib
import ctypes
import importlib
import json
import os
import random
import runpy
import select
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator, Optional

from . import template_client
from .template_client import frame

WORKER_SCRIPT = "default_worker.py"   # Ray's Python worker entry point (ray/_private/workers/)
# what Ray imports from other packages, loaded once in the template (never Ray itself: see the module
# doc); a missing one is skipped. torch and the cell code come from the driver (``fork(first=...)``).
PRELOAD = ("google.protobuf.descriptor_pool", "google.protobuf.text_format", "google.protobuf.json_format",
           "google.protobuf.internal.builder", "requests", "jsonschema", "yaml", "pydantic", "psutil", "click",
           "colorful", "packaging.version", "filelock", "pdb", "asyncio", "logging.handlers", "http.server",
           "zoneinfo", "tracemalloc", "faulthandler")
PR_SET_PDEATHSIG = 1
ENV = "BIDL_CELL_TEMPLATE"   # set in forked workers: the template's pid (diagnostics)

_FORKED_AT: Optional[float] = None   # in a forked worker: when it was forked (epoch seconds)


def forked_at() -> Optional[float]:
    """When this process was forked from a cell template (None: it was not)."""
    return _FORKED_AT


def _die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


REFERENCE_MODULE = "bidl_runtime.driver.reference"  # the verifier's processes run it (forked too)
CELL_MODULES = ("torch", "bidl_runtime.cell.cell", "bidl_runtime.cell.compiled", "compile.artifact",
                REFERENCE_MODULE)   # what a driver and every cell need: imported once, in the driver


class CellTemplate:
    """A forked template process serving worker forks on a Unix socket (see the module doc)."""

    _active: Optional["CellTemplate"] = None

    def __init__(self, pid: int, directory: Path, modules: tuple[str, ...] = ()):
        self.pid, self.directory, self.modules = pid, directory, modules
        self.socket = directory / "template.sock"
        self.launcher = directory / "python"
        self.python = sys.executable

    @classmethod
    def active(cls) -> Optional["CellTemplate"]:
        """This process's template, if it forked one that is still running."""
        t = cls._active
        return t if t is not None and t.alive() else None

    def command(self, *args: str) -> list[str]:
        """A command line whose process is forked from the template and runs ``args`` (``-m MODULE``,
        MODULE one of the template's ``modules``), with the command's standard streams and environment."""
        return [self.python, "-S", "-I", template_client.__file__, str(self.socket), self.python, *args]

    @classmethod
    def fork(cls, first: tuple[str, ...] = (), preload: tuple[str, ...] = PRELOAD,
             modules: tuple[str, ...] = ()) -> Optional["CellTemplate"]:
        """Import ``first`` here (modules this process needs too: torch, the cell code), then fork the
        template, which imports ``preload``; it may also run ``modules`` as ``__main__``
        (:meth:`command`). None where it cannot: not Linux, another Python thread running, Ray
        imported already (native threads, e.g. OpenBLAS's pool, survive a fork), or the fork failed."""
        if sys.platform != "linux" or not hasattr(os, "pidfd_open") or threading.active_count() > 1:
            return None
        for name in first:
            importlib.import_module(name)
        if "ray" in sys.modules or threading.active_count() > 1:
            return None
        directory = Path(tempfile.mkdtemp(prefix="bidl-cells-"))   # 0700: only this user reaches the socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(directory / "template.sock"))
            listener.listen(64)
            _write_launcher(directory / "python", directory / "template.sock")
            for f in (sys.stdout, sys.stderr):
                f.flush()
            parent = os.getpid()
            pid = os.fork()
        except OSError:
            listener.close()
            shutil.rmtree(directory, ignore_errors=True)
            return None
        if pid == 0:   # the template
            code = 0
            try:
                _serve(listener, parent, preload, modules)
            except BaseException:  # noqa: BLE001 - the template ends quietly; workers fall back
                code = 1
            os._exit(code)
        listener.close()
        template = cls._active = cls(pid, directory, modules)
        atexit.register(template.close)
        return template

    @classmethod
    def for_cells(cls) -> Optional["CellTemplate"]:
        """The template of a grid's driver (``bidl-run``'s, a benchmark's, the tests'): torch and the
        cell code imported here, the reference's module runnable. Call it before Ray is imported; None
        where it cannot be forked (then Ray starts plain workers)."""
        return cls.fork(first=CELL_MODULES, modules=(REFERENCE_MODULE,))

    @contextlib.contextmanager
    def workers(self) -> Iterator[None]:
        """Ray nodes started in this block fork their Python workers from the template."""
        real = sys.executable
        sys.executable = str(self.launcher)
        try:
            yield
        finally:
            sys.executable = real

    def alive(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            return pid == 0
        except ChildProcessError:
            return False

    def close(self) -> None:
        """End the template (workers forked from it end with it) and remove its directory."""
        if CellTemplate._active is self:
            CellTemplate._active = None
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


def template_workers(template: Optional[CellTemplate] = None) -> contextlib.AbstractContextManager:
    """``template.workers()`` (default: this process's active template), or a no-op without one."""
    template = template or CellTemplate.active()
    return template.workers() if template is not None else contextlib.nullcontext()


def _write_launcher(path: Path, sock: Path) -> None:
    """The interpreter Ray's node is told about: Ray's worker command goes to the template, anything
    else to the real interpreter."""
    py, client = sys.executable, template_client.__file__
    q = _shell_quote
    path.write_text(
        "#!/bin/sh\n"
        "# bidl-grid: Ray workers forked from the cell template (bidl_runtime/cell/template.py)\n"
        f'case "$1" in */{WORKER_SCRIPT}) exec {q(py)} -S -I {q(client)} {q(str(sock))} {q(py)} "$@" ;; esac\n'
        f'exec {q(py)} "$@"\n')
    path.chmod(0o700)


def _shell_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


# ------------------------------------------------------------------------------------ the template


def _serve(listener: socket.socket, parent: int, preload: tuple[str, ...], modules: tuple[str, ...]) -> None:
    """The template's loop: fork a worker per request, report each worker's exit, kill a worker
    whose client is gone; end with the driver."""
    os.setsid()                       # not in the terminal's process group: Ctrl-C goes to the driver
    _die_with_parent()
    if os.getppid() != parent:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):              # let go of the driver's streams (a caller waiting for EOF on them)
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in preload:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a worker imports what is missing itself
            pass
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    clients: dict[socket.socket, int] = {}     # client connection -> its worker's pid
    exits: dict[int, int] = {}                 # worker pid -> exit code, not yet reported
    while True:
        ready, _, _ = select.select([listener, wake_r, *clients], [], [], 5.0)
        if os.getppid() != parent:
            return
        for r in ready:
            if r is listener:
                _accept(listener, clients, (listener.fileno(), wake_r, wake_w), modules)
            elif r == wake_r:
                _drain(wake_r)
            elif r in clients:            # the client sent nothing more: it is gone
                pid = clients.pop(r)
                r.close()
                if pid not in exits:
                    _kill(pid)
        _reap(exits)
        for conn, pid in list(clients.items()):
            if pid in exits:
                with contextlib.suppress(OSError):
                    conn.sendall(frame({"exit": exits.pop(pid)}))
                conn.close()
                del clients[conn]
        for pid in [p for p in exits if p not in clients.values()]:
            exits.pop(pid)


def _accept(listener: socket.socket, clients: dict[socket.socket, int], own: tuple[int, ...],
            modules: tuple[str, ...]) -> None:
    conn, _ = listener.accept()
    conn.settimeout(5.0)
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        uid = int.from_bytes(creds[4:8], sys.byteorder)
        if uid != os.getuid():
            raise PermissionError(f"uid {uid}")
        request, fds = _recv_request(conn, modules)
        pid = os.fork()
        if pid == 0:
            _become_worker(request, fds, [c.fileno() for c in clients] + [conn.fileno(), *own])
        for fd in fds:
            os.close(fd)
        conn.sendall(frame({"pid": pid}))
        conn.settimeout(None)
        clients[conn] = pid
    except (OSError, ValueError, KeyError) as e:
        with contextlib.suppress(OSError):
            conn.sendall(frame({"error": str(e)}))
        conn.close()


def _recv_request(conn: socket.socket, modules: tuple[str, ...]) -> tuple[dict, list[int]]:
    """The request frame and the three standard-stream descriptors sent with it."""
    fds = array.array("i")
    head, ancillary, _, _ = conn.recvmsg(template_client.HEADER.size, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    if len(head) != template_client.HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    (n,) = template_client.HEADER.unpack(head)
    body = b""
    while len(body) < n:
        chunk = conn.recv(n - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    request = json.loads(body)
    argv = request.get("argv")
    if not (isinstance(argv, list) and argv and (os.path.basename(str(argv[0])) == WORKER_SCRIPT
                                                 or (len(argv) >= 2 and argv[:1] == ["-m"] and argv[1] in modules))):
        raise ValueError("not a Ray worker command")
    return request, list(fds)


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError, OSError):
        os.set_blocking(fd, False)
        while os.read(fd, 512):
            pass


def _reap(exits: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        exits[pid] = os.waitstatus_to_exitcode(status)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------------ a worker

def _fresh_streams() -> None:
    """Python's standard streams on fds 0-2 (the client's, just taken), as a new interpreter has them:
    the template's objects are its parent's, which may have replaced them (a test runner's capture)."""
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False)
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)


def _become_worker(request: dict, fds: list[int], close: list[int]) -> None:
    """In the forked child: take the client's streams, environment, directory and arguments, and run
    Ray's worker entry point as ``__main__``; never returns."""
    global _FORKED_AT
    _FORKED_AT = time.time()
    code = 1
    try:
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.set_wakeup_fd(-1)
        for s, h in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler),
                     (signal.SIGTERM, signal.SIG_DFL)):
            signal.signal(s, h)
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        _fresh_streams()
        _die_with_parent()            # the template (and so the driver) gone: this worker goes too
        os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        os.environ[ENV] = str(os.getppid())
        random.seed()
        atexit._clear()               # the driver's exit handlers are not this process's
        argv = [str(a) for a in request["argv"]]
        try:
            if argv[0] == "-m":
                sys.argv = argv[1:]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = argv
                sys.path[0] = os.path.dirname(argv[0])
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - the worker's error goes to its log (its stderr)
        traceback.print_exc()
    finally:
        for f in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                f.flush()
        os._exit(code)
