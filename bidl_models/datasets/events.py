"""Event streams and their conversion to frames.

An event stream is a numpy structured array with dtype :data:`EVENT_DTYPE`: fields ``t`` (int64,
microseconds), ``x``, ``y`` (int16 pixel column / row, origin top-left) and ``p`` (int8 polarity,
1 = ON = brighter, 0 = OFF = darker).

:func:`events_to_frames` turns a stream into ``T`` frames of per-polarity event counts, shape
``[T, 2, H, W]`` (channel 0 = OFF, channel 1 = ON, as BIDL's ``[T, C, H, W]`` samples). Counts are
int32 by default, so they never wrap; a narrower ``dtype`` saturates at its maximum instead of
wrapping (e.g. ``np.uint8`` clips counts at 255).

Binning, with ``N`` events sorted by time:

* ``split_by='number'``: event ``i`` (0-based, in time order) goes to frame ``floor(i*T/N)``, i.e.
  frame ``j`` holds events ``ceil(j*N/T) <= i < ceil((j+1)*N/T)`` (equal counts, up to one event).
* ``split_by='time'``: over the window ``[t0, t1)`` (default ``t0 = t.min()``,
  ``t1 = t.max() + 1``), event at time ``t`` goes to frame ``floor((t - t0) * T / (t1 - t0))``
  (equal durations, exact integer arithmetic); events outside the window are dropped.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

EVENT_DTYPE = np.dtype([("t", np.int64), ("x", np.int16), ("y", np.int16), ("p", np.int8)])
SPLIT_BY = ("number", "time")


def make_events(t: Sequence[int], x: Sequence[int], y: Sequence[int], p: Sequence[int]) -> np.ndarray:
    """A structured event array (:data:`EVENT_DTYPE`) from four equally long sequences."""
    t, x, y, p = (np.asarray(a) for a in (t, x, y, p))
    n = len(t)
    if not (len(x) == len(y) == len(p) == n):
        raise ValueError(f"make_events: lengths differ: t {n}, x {len(x)}, y {len(y)}, p {len(p)}")
    ev = np.empty(n, EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev


def _saturate(counts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        hi = np.iinfo(dtype).max
        if counts.size and counts.max() > hi:
            counts = np.minimum(counts, hi)
    return counts.astype(dtype, copy=False)


def frame_index(t: np.ndarray, timestep: int, split_by: str = "number",
                t_range: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Frame index of each event of a time-sorted stream (-1: outside the time window)."""
    n = len(t)
    if split_by == "number":
        if t_range is not None:
            raise ValueError("t_range is only used with split_by='time'")
        i = np.arange(n, dtype=np.int64)
        return ((i * timestep) // max(n, 1)).astype(np.int64)
    if split_by != "time":
        raise ValueError(f"split_by={split_by!r}: expected one of {list(SPLIT_BY)}")
    t = t.astype(np.int64, copy=False)
    if t_range is None:
        if n == 0:
            return np.zeros(0, np.int64)
        t0, t1 = int(t.min()), int(t.max()) + 1
    else:
        t0, t1 = int(t_range[0]), int(t_range[1])
        if t1 <= t0:
            raise ValueError(f"t_range={tuple(t_range)!r}: expected t0 < t1")
    idx = ((t - t0) * timestep) // (t1 - t0)
    idx[(t < t0) | (t >= t1)] = -1
    return idx


def events_to_frames(events: np.ndarray, timestep: int, size: tuple[int, int], split_by: str = "number",
                     t_range: Optional[tuple[int, int]] = None, dtype: np.dtype | type = np.int32) -> np.ndarray:
    """``[T, 2, H, W]`` per-polarity event counts (see the module docstring for the binning).

    ``events``: :data:`EVENT_DTYPE` array (sorted by ``t`` if not already; stable). ``size``: (H, W);
    events outside it raise ValueError. Vectorized: one ``np.bincount`` over flat indices.
    """
    timestep = int(timestep)
    if timestep < 1:
        raise ValueError(f"timestep={timestep!r}: expected a positive int")
    h, w = (int(s) for s in size)
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by={split_by!r}: expected one of {list(SPLIT_BY)}")
    if events.dtype.names is None or not {"t", "x", "y", "p"} <= set(events.dtype.names):
        raise ValueError(f"events: expected a structured array with fields t, x, y, p; got dtype {events.dtype}")
    t = events["t"]
    if len(t) > 1 and np.any(t[1:] < t[:-1]):
        events = events[np.argsort(t, kind="stable")]
        t = events["t"]
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    p = (events["p"] > 0).astype(np.int64)
    if len(x) and (x.min() < 0 or x.max() >= w or y.min() < 0 or y.max() >= h):
        raise ValueError(f"events outside the sensor size (H={h}, W={w}): x in [{x.min()}, {x.max()}], "
                         f"y in [{y.min()}, {y.max()}]")
    f = frame_index(t, timestep, split_by, t_range)
    keep = f >= 0
    flat = ((f[keep] * 2 + p[keep]) * h + y[keep]) * w + x[keep]
    counts = np.bincount(flat, minlength=timestep * 2 * h * w).reshape(timestep, 2, h, w)
    return _saturate(counts, dtype)
