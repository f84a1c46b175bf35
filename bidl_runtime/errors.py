"""The runtime's errors, in one place: each message is one line naming the cell, node, file or flag.

The channels' own errors (a dead peer, a closed or timed-out channel) are in
:mod:`bidl_runtime.channels.errors`, the compile stage's in :mod:`compile.errors`.
"""
from __future__ import annotations


class RunError(RuntimeError):
    """The run failed (a cell failed past its restarts, or a wait expired); names the cell where known."""


class CellError(RuntimeError):
    """A cell failed; the message names the cell."""


class ShipError(RuntimeError):
    """An artifact did not arrive intact (names the file and both hashes)."""


class CudaUnavailable(ValueError):
    """The cuda backend cannot run here; the message is one line (CLIs print it as ``error: ...``)."""
