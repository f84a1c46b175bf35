"""Timing primitives of a device context: streams, events (CPU and CUDA) and the busy clock.

On CPU a stream runs work as it is enqueued and an event is a ``perf_counter`` reading; on CUDA they
wrap ``torch.cuda.Stream`` / ``torch.cuda.Event``. A cell's busy time per chunk is the time between
two events, accumulated by :class:`BusyClock`.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

import torch


class Stream:
    """An in-order queue of device work. On CPU, work runs when enqueued (synchronous)."""


class Event:
    """A point in a stream: ``record`` marks it; timings between two."""

    def __init__(self) -> None:
        self._t: Optional[float] = None

    def record(self, stream: Optional[Stream] = None) -> None:
        self._t = time.perf_counter()

    def elapsed_ms(self, end: "Event") -> float:
        if self._t is None or end._t is None:
            raise RuntimeError("elapsed_ms needs two recorded events")
        return (end._t - self._t) * 1e3



class CudaStream(Stream):
    """A ``torch.cuda.Stream`` of the cell's device."""

    def __init__(self, device: torch.device):
        self.raw = torch.cuda.Stream(device)


class CudaEvent(Event):
    """A timing ``torch.cuda.Event``; ``elapsed_ms`` waits for the end event."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = torch.cuda.Event(enable_timing=True)
        self._recorded = False

    def record(self, stream: Optional[Stream] = None) -> None:
        raw = getattr(stream, "raw", None)
        self.raw.record(raw) if raw is not None else self.raw.record()
        self._recorded = True

    def elapsed_ms(self, end: "Event") -> float:
        if not (self._recorded and getattr(end, "_recorded", False)):
            raise RuntimeError("elapsed_ms needs two recorded events")
        end.raw.synchronize()
        return float(self.raw.elapsed_time(end.raw))



@dataclass
class BusyClock:
    """Accumulates device-busy time between event pairs; keeps the last ``window`` chunk times (for
    medians: a long stream does not grow the cell's memory)."""

    busy_s: float = 0.0
    window: int = 2048
    samples_ms: deque = field(default_factory=deque)

    def add(self, ms: float) -> None:
        self.busy_s += ms / 1e3
        self.samples_ms.append(ms)
        if len(self.samples_ms) > self.window:
            self.samples_ms.popleft()
