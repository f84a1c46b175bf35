"""The one "retry on timeout, check for a reason to stop, give up after a limit" loop.

Every blocking wait in the runtime (a cell waiting for an input or a credit, the outbox waiting
for its last job, the driver waiting for a free slot, a result, or a feed credit) is a short
bounded attempt repeated by :func:`patiently`::

    msg = patiently(lambda t: rx.recv(timeout=t), poll_s=0.2, limit_s=600,
                    check=grid.check, give_up=lambda s: CellError(f"no input for {s:.0f} s"))

After every expired attempt ``check()`` runs (it raises to stop waiting: a failed peer, a stop
flag) and the time waited so far is compared with ``limit_s`` (None: no limit).
"""
from __future__ import annotations

from typing import Callable, Optional, TypeVar

from .channels import ChannelTimeout

T = TypeVar("T")


class Expired(Exception):
    """One bounded attempt ran out of time (raised by :func:`attempt` for boolean waits)."""


RETRY_ON = (ChannelTimeout, Expired)


def attempt(ok: bool) -> bool:
    """Adapt a wait that returns False on timeout (``Event.wait``, ``Semaphore.acquire``)."""
    if not ok:
        raise Expired
    return ok


def patiently(op: Callable[[float], T], *, poll_s: float, limit_s: Optional[float] = None,
              check: Optional[Callable[[], None]] = None,
              give_up: Optional[Callable[[float], BaseException]] = None) -> T:
    """``op(poll_s)`` until it returns; after each timeout run ``check`` and, past ``limit_s``
    seconds of waiting, raise ``give_up(waited)`` (default: :class:`TimeoutError`)."""
    waited = 0.0
    while True:
        try:
            return op(poll_s)
        except RETRY_ON:
            waited += poll_s
            if check is not None:
                check()
            if limit_s is not None and waited >= limit_s:
                err = give_up(waited) if give_up is not None else TimeoutError(f"gave up after {waited:.0f} s")
                raise err from None
