"""Processes of this node: when one started, whether one is alive (no torch, no Ray)."""
from __future__ import annotations

import time


def process_start_time() -> float:
    """Epoch time at which this process started (psutil, which Ray depends on)."""
    try:
        import psutil
        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - fall back to now
        return time.time()


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
