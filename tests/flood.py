"""A flood of plain TCP connections from another process, optionally run as another user.

``Flood(targets, total, user)`` starts the flooder and returns once the first half of ``total``
connections is opened (round-robin over ``targets``); ``go_on()`` opens the second half; ``stop()``
closes everything and returns ``(opened, refused)``. Connection kinds cycle: silent, garbage, a slow
trickle after a valid-looking length prefix, half a frame, an oversized length prefix. The flooder
holds every connection it opened (the slow ones get one more byte every 0.2 s) until ``stop()``.
"""
from __future__ import annotations

import os
import pwd
import select
import subprocess
import sys
import time
from typing import Optional

SCRIPT = r"""
import os, select, socket, struct, sys, time
total = int(sys.argv[1])
targets = [(h, int(p)) for h, p in (t.rsplit(":", 1) for t in sys.argv[2].split(","))]
held, slow = [], []
opened = refused = 0


def trickle():
    for s in slow:
        try:
            s.send(b"\x90", socket.MSG_DONTWAIT)
        except OSError:
            pass


def one(i):
    global opened, refused
    host, port = targets[i % len(targets)]
    try:
        s = socket.create_connection((host, port), timeout=0.25)
    except OSError:
        refused += 1
        return
    opened += 1
    kind = (i // len(targets)) % 5
    try:
        if kind == 1:
            s.sendall(os.urandom(64))
        elif kind == 2:
            s.sendall(struct.pack("!I", 400))
            slow.append(s)
        elif kind == 3:
            s.sendall(struct.pack("!I", 300) + b"\x93" * 40)
        elif kind == 4:
            s.sendall(struct.pack("!I", 2**31 - 1))
    except OSError:
        pass
    held.append(s)


half = total // 2
for i in range(half):
    one(i)
print("HALF", opened, refused, flush=True)
sys.stdin.readline()
for i in range(half, total):
    one(i)
    if i % 50 == 0:
        trickle()
print("DONE", opened, refused, flush=True)
for _ in range(3000):   # at most 10 minutes: until stdin closes
    if select.select([sys.stdin], [], [], 0.2)[0] and not sys.stdin.readline():
        break
    trickle()
for s in held:
    s.close()
"""


def other_user() -> tuple[Optional[tuple[str, int, int]], str]:
    """``(python, uid, gid)`` to run the flooder as user ``nobody``, or None and why not."""
    if os.getuid() != 0:
        return None, "running another user's process needs root"
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None, "no user 'nobody' here"
    for python in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if os.path.exists(python):
            r = subprocess.run([python, "-c", "import os; print(os.getuid())"], user=pw.pw_uid, group=pw.pw_gid,
                               extra_groups=[], cwd="/", capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and r.stdout.strip() == str(pw.pw_uid):
                return (python, pw.pw_uid, pw.pw_gid), ""
    return None, "no Python that user 'nobody' may run (this interpreter lives under /root)"


class Flood:
    """The flooder process (see the module doc)."""

    def __init__(self, targets: list[tuple[str, int]], total: int = 1000, as_user: Optional[tuple] = None):
        python, kw = sys.executable, {}
        if as_user is not None:
            python, uid, gid = as_user
            kw = dict(user=uid, group=gid, extra_groups=[], cwd="/")
        addrs = ",".join(f"{h}:{p}" for h, p in targets)
        self.proc = subprocess.Popen([python, "-c", SCRIPT, str(total), addrs], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"}, **kw)
        self.first = self._line("HALF")

    def _line(self, tag: str, timeout: float = 300.0) -> tuple[int, int]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                if not line:
                    break
                if line.startswith(tag):
                    _, opened, refused = line.split()
                    return int(opened), int(refused)
        self.proc.kill()
        raise RuntimeError(f"the flooder did not report {tag} (exit {self.proc.poll()})")

    def go_on(self) -> None:
        """Open the second half now (returns at once)."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> tuple[int, int]:
        """Wait for the second half, close every connection, end the process: ``(opened, refused)``."""
        try:
            done = self._line("DONE")
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return done
