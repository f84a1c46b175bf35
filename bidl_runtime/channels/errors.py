"""Channel errors: every one names the channel it happened on."""
from __future__ import annotations


class ChannelError(Exception):
    """Base class of channel failures; ``channel`` is the channel's name."""

    def __init__(self, channel: str, message: str):
        super().__init__(f"channel {channel!r}: {message}")
        self.channel = channel


class ChannelTimeout(ChannelError, TimeoutError):
    """A bounded wait expired; the message says what was awaited and for how long."""

    def __init__(self, channel: str, role: str, what: str, timeout_s: float):
        super().__init__(channel, f"{role} timed out after {timeout_s:.3g} s waiting for {what}")
        self.role = role
        self.what = what
        self.timeout_s = timeout_s


class ChannelClosed(ChannelError):
    """The peer closed the channel in an orderly way (or this end is closed)."""


class PeerDied(ChannelError, ConnectionError):
    """The peer's process went away without closing (EOF/reset on the control socket)."""


class ChecksumError(ChannelError, ValueError):
    """A received payload does not match the checksum in its envelope (tcp transport)."""
