"""The Ray worker process the raylet starts when cells come from a template (:mod:`bidl_runtime.cell.template`).

Run as ``python -S -I template_client.py SOCKET PYTHON default_worker.py ARGS...`` by the launcher
script: it hands the worker command, its environment, working directory and standard streams to the
template, which forks the worker; this process then stands in for it (the signals it gets are passed
on, the worker's exit status is its own). If the template cannot be reached, it becomes the plain
worker (``PYTHON default_worker.py ARGS...``). If the worker's connection to the template breaks
(the template is gone), it waits for the worker's process to end.

Standard library only, nothing from the project: it runs without ``site`` and ignores ``PYTHON*``
variables (``-S -I``), in milliseconds.
"""
from __future__ import annotations

import array
import json
import os
import select
import signal
import socket
import struct
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
HEADER = struct.Struct("!I")


def read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed frame (b'' at end of stream)."""
    head = _read_exactly(sock, HEADER.size)
    if not head:
        return b""
    return _read_exactly(sock, HEADER.unpack(head)[0])


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def frame(payload: dict) -> bytes:
    """``payload`` as one length-prefixed JSON frame."""
    data = json.dumps(payload).encode()
    return HEADER.pack(len(data)) + data


def ask(sock_path: str, command: list[str]) -> tuple[socket.socket, int]:
    """Ask the template to fork ``command``; the connection and the worker's pid."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    request = frame({"argv": command, "env": dict(os.environ), "cwd": os.getcwd(), "launcher": os.getpid()})
    sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    reply = json.loads(read_frame(sock) or b"{}")
    if "pid" not in reply:
        raise OSError(reply.get("error", "the template did not fork the worker"))
    return sock, int(reply["pid"])


def wait_exit(sock: socket.socket, pid: int) -> int:
    """The worker's exit status as an exit code (from the template; if it is gone, once the worker ends)."""
    try:
        msg = json.loads(read_frame(sock) or b"{}")
    except (OSError, ValueError):
        msg = {}
    if "exit" in msg:
        return int(msg["exit"])
    try:   # no template: wait for the process itself
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return 1
    while True:
        try:
            select.select([fd], [], [])
            return 1
        except InterruptedError:
            continue


def main(argv: list[str]) -> int:
    sock_path, python, command = argv[1], argv[2], argv[3:]
    try:
        sock, pid = ask(sock_path, command)
    except (OSError, ValueError):
        os.execv(python, [python, *command])   # no template: the plain worker process

    def forward(signum: int, frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for s in FORWARDED:
        signal.signal(s, forward)
    return wait_exit(sock, pid)


if __name__ == "__main__":
    code = main(sys.argv)
    if code < 0:   # killed by a signal: end the same way
        if -code in FORWARDED:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)
