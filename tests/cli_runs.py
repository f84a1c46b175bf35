"""A command (``bidl-run`` by default) run as a subprocess in a process group of its own, so that what it
leaves behind is counted among its own processes only: its process group (Ray's GCS, raylet, dashboard,
agents and cells all inherit it) and the Ray sessions it created (named with its pid), never another
cluster running on the same machine. Its channel files in /dev/shm are those named with the pid of one
of its processes (seen while it ran)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

from bidl_runtime.channels.shm import PREFIX
from bidl_runtime.cluster.cleanup import SESSION, ray_processes

ENV = dict(os.environ, PYTHONUNBUFFERED="1")   # token auth as set up by conftest (RAY_AUTH_TOKEN_PATH)


def _stat(pid: int) -> Optional[list[str]]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


class CliRun:
    """``python -m <module> <args>`` started now; ``stdout`` / ``stderr`` collected as it runs."""

    def __init__(self, *args: str, module: str = "bidl_runtime.run", env: Optional[dict] = None,
                 cwd: Optional[str] = None):
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env or ENV, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        self._out, self._err = bytearray(), bytearray()
        self.seen: set[int] = {self.pid}          # every process of the run seen while it ran
        self._readers = [threading.Thread(target=self._read, args=(f, b), daemon=True)
                         for f, b in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(f, buf: bytearray) -> None:
        for chunk in iter(lambda: os.read(f.fileno(), 65536), b""):
            buf.extend(chunk)

    @property
    def stdout(self) -> str:
        return self._out.decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.decode(errors="replace")

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def lines(self, prefix: str) -> list[str]:
        """Lines of stdout and stderr starting with ``prefix`` (progress bars' carriage returns and
        cursor moves count as line ends)."""
        text = re.sub(r"\r|\x1b\[[0-9;]*[A-Za-z]", "\n", self.stdout + "\n" + self.stderr)
        return [ln for ln in text.splitlines() if ln.startswith(prefix)]

    def processes(self) -> dict[int, str]:
        """The run's processes now (not zombies): its process group and the Ray sessions it created."""
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                f = _stat(int(d))
                if f and f[0] != "Z" and int(f[2]) == self.pid:
                    out[int(d)] = Path(f"/proc/{d}/comm").read_text().strip() if Path(f"/proc/{d}/comm").exists() else "?"
        for p in ray_processes():
            if int(SESSION.match(p.session + "/logs/").group(3)) == self.pid and (_stat(p.pid) or ["Z"])[0] != "Z":
                out[p.pid] = p.name
        self.seen |= set(out)
        return out

    def wait_for(self, text: str, timeout: float = 300) -> bool:
        """Wait until ``text`` appears in its output (False: it exited or ``timeout`` passed first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text.encode() in self._out or text.encode() in self._err:
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)
                return text.encode() in self._out or text.encode() in self._err
            self.processes()
            time.sleep(0.1)
        return False

    def finish(self, timeout: float = 600) -> "CliRun":
        """Wait for it to exit (killed after ``timeout``) and its output to be read."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.processes()
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self._readers:
            t.join(timeout=10)
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> "CliRun":
        self.processes()
        self.proc.send_signal(sig)
        return self.finish(timeout)

    def leftovers(self, wait_s: float = 5.0) -> dict[int, str]:
        """Its processes still running ``wait_s`` after it exited (waits that long at most)."""
        deadline = time.monotonic() + wait_s
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def shm_files(self) -> list[str]:
        """Channel slot files in /dev/shm made by one of its processes."""
        out = []
        for fn in os.listdir("/dev/shm"):
            m = re.match(re.escape(PREFIX) + r"(\d+)\.", fn)
            if m and int(m.group(1)) in self.seen:
                out.append(fn)
        return out

    def kill_all(self) -> None:
        """Stop whatever of it still runs (a failed test's cleanup), by pid."""
        for p in self.processes():
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def run_cli(*args: str, timeout: float = 600, **kw) -> CliRun:
    """Run ``bidl-run`` with ``args`` to its end."""
    return CliRun(*args, **kw).finish(timeout)
