"""Per-endpoint counters: messages, bytes, blocked/busy time with medians, hop latency."""
from __future__ import annotations

import statistics
from collections import deque
from typing import Any


def _median_ms(d: deque) -> float | None:
    return statistics.median(d) * 1e3 if d else None


class ChannelStats:
    """Counters of one endpoint.

    Sender: ``blocked`` = waiting for a credit (a released slot); ``busy`` = copying into the slot and
    publishing the sent event (tcp: also writing the payload to the socket).
    Receiver: ``blocked`` = waiting for the sent event; ``busy`` = tcp payload read + checksum (0 on shm);
    ``hop`` = the sender's sent event to the message being ready here (the per-edge hop time; includes
    any time the message waited for the receiver to call recv; clocks: monotonic on shm, wall on tcp).
    ``rejected``: connections the receiver dropped (not the expected, authenticated sender).
    ``reconnects``: sender: times it connected again because the receiver dropped its connection before
    welcoming it (a flood of unproven connections can make a receiver do that).
    ``fenced``: receiver: hellos and messages of another grid epoch that it refused (a cell fenced off
    with a lost host; see ``ChannelConfig.epoch``).
    """

    def __init__(self, channel: str, role: str, transport: str, window: int = 4096):
        self.channel, self.role, self.transport = channel, role, transport
        self.messages = 0
        self.control_messages = 0
        self.bytes = 0
        self.blocked_s = 0.0
        self.busy_s = 0.0
        self.rejected = 0                    # receiver: connections dropped before/instead of a valid hello
        self.last_rejected: str | None = None
        self.reconnects = 0                  # sender: connections dialled again before the welcome
        self.fenced = 0                      # receiver: hellos and messages of another grid epoch, refused
        self.tls: str | None = None          # tcp with TLS: the protocol and cipher of the connection
        self._blocked: deque[float] = deque(maxlen=window)
        self._busy: deque[float] = deque(maxlen=window)
        self._hop: deque[float] = deque(maxlen=window)

    def record(self, nbytes: int, blocked_s: float, busy_s: float, hop_s: float | None = None,
               control: bool = False) -> None:
        """Account one message."""
        if control:
            self.control_messages += 1
        else:
            self.messages += 1
            self.bytes += nbytes
        self.blocked_s += blocked_s
        self.busy_s += busy_s
        self._blocked.append(blocked_s)
        self._busy.append(busy_s)
        if hop_s is not None:
            self._hop.append(hop_s)

    def snapshot(self) -> dict[str, Any]:
        """A plain dict (msgpack/JSON-able) of the counters and medians."""
        return {
            "channel": self.channel, "role": self.role, "transport": self.transport,
            "messages": self.messages, "control_messages": self.control_messages, "bytes": self.bytes,
            "blocked_s_total": self.blocked_s, "blocked_ms_median": _median_ms(self._blocked),
            "busy_s_total": self.busy_s, "busy_ms_median": _median_ms(self._busy),
            "hop_ms_median": _median_ms(self._hop),
            "latency_ms_median": _median_ms(self._hop),  # alias of hop_ms_median (older name)
            "rejected_connections": self.rejected, "last_rejected": self.last_rejected,
            "reconnects": self.reconnects, "fenced": self.fenced, "tls": self.tls,
        }
