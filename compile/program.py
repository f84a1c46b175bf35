"""What a grid cell runs: a :class:`Program` (a compiled artifact, or an emulated one's pace) with its
chunk signature, and :class:`ProgramSet`, the protocol of the one-per-(segment, chunk length) sets
that the planner places (``compile.ArtifactSet`` and the runtime's ``EmulatedSet``).

Pure data: no torch, so a plan that holds programs is read (printed, shipped, pickled) without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol

from bidl_models.specs import Signature

ProgramKey = tuple[int, int]      # (segment, chunk length)


@dataclass(frozen=True)
class Program:
    """One segment over chunks of ``t`` steps: ``signature`` in chunk form with the batch
    (``x``/``y`` and carries ``[t, B, ...]``, state ``[B, ...]``); ``path`` the compiled artifact
    directory (absolute on the node that runs it), None for an emulated program, which computes
    nothing and takes ``seconds_per_step`` per step; ``fast``: load the artifact's TorchScript form
    when it has one (milliseconds instead of about a second); ``origin``: for a copy shipped to another
    node, the directory on the driver's host it came from (what is shipped again when cells move)."""

    signature: Signature
    path: Optional[str] = None
    fast: bool = True
    seconds_per_step: float = 0.0
    origin: Optional[str] = field(default=None, compare=False)

    @property
    def emulated(self) -> bool:
        return self.path is None


class ProgramSet(Protocol):
    """Programs for every (segment, chunk length) of a model cut into ``splits`` (columns) and time
    slices ``slices`` (rows), ``batch`` samples per message."""

    net: str
    T: int
    slices: tuple[int, ...]
    splits: tuple[tuple[int | str, int | str], ...]
    split_source: str
    batch: int

    def programs(self) -> Mapping[ProgramKey, Program]:
        """``(segment, chunk length) -> Program``, paths absolute on this node."""
        ...
