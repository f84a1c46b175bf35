"""DvsGlyphs: a procedurally generated DVS dataset that needs no download.

Each sample is a digit glyph (0-9, from a 5x7 bitmap font) moving in a straight line across an
``H x W`` event camera, slightly rotated and scaled, over ``duration_us``. The camera is simulated as
a DVS does it: every pixel keeps a reference log intensity and emits one ON (OFF) event each time the
log intensity rises (falls) by its contrast threshold (0.2 with per-pixel mismatch) from it, over
``substeps`` rendered images; event times are jittered inside each substep and background-activity
noise events are added. The events become ``timestep`` frames of per-polarity counts
(``events_to_frames``, ``split_by='time'`` over the whole duration), uint8 ``[T, 2, H, W]``
(counts saturate at 255).

Sample ``i`` of split ``s`` is a pure function of ``(seed, s, i)`` (``np.random.default_rng``):
deterministic, independent of the order samples are read, and the train and test splits never share
a random stream. Labels are ``i % num_classes`` (balanced). Getting a sample takes about a
millisecond: ``DvsGlyphs(split='test').frames(i)`` (no pipeline) or ``dataset[i]`` (pipeline).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .events import EVENT_DTYPE, events_to_frames

_FONT_ROWS = {
    0: ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    1: ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    2: ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    3: ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    4: ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    5: ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    6: ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    7: ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    8: ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    9: ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}
# [10, 9, 7] glyph bitmaps with a zero border of one cell (so bilinear sampling fades to background)
FONT = np.stack([np.pad(np.array([[int(c) for c in r] for r in _FONT_ROWS[d]], np.float32), 1)
                 for d in range(10)])
SPLITS = ("train", "test")


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``img[row, col]`` at continuous (col=u, row=v) cell-centre coordinates, 0 outside:
    ``out = sum over the 4 taps (r, c) = (floor v + dv, floor u + du) of w_uv * img[r, c]`` with
    ``w = (1-fu)(1-fv), fu(1-fv), (1-fu)fv, fu fv`` (``fu = u - floor u``), each term rounded to float32
    and added in that order. The image is read through a 2-cell zero ring, coordinates clipped into it,
    so taps outside read 0 without masks."""
    h, w = img.shape
    flat = np.pad(img, 2).ravel()
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    gu, gv = 1 - fu, 1 - fv
    row = w + 4
    base = (np.clip(v0, -2, h) + 2).astype(np.intp) * row + (np.clip(u0, -2, w) + 2).astype(np.intp)
    out = (gu * gv * flat[base]).astype(np.float32)
    out += (fu * gv * flat[base + 1]).astype(np.float32)
    out += (gu * fv * flat[base + row]).astype(np.float32)
    out += (fu * fv * flat[base + row + 1]).astype(np.float32)
    return out


@DATASETS.register()
class DvsGlyphs(BaseDataset):
    """Generated moving-digit DVS dataset (see the module docstring). No files are read.

    ``split``: 'train' or 'test' (default: 'test' if ``test_mode`` else 'train'); ``num_samples``
    per split; ``timestep`` frames of ``size=(H, W)``; ``num_classes`` <= 10 digits.
    """

    CLASSES = [str(d) for d in range(10)]

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False, num_samples: int = 1000,
                 split: Optional[str] = None, seed: int = 0, timestep: int = 20, size: Sequence[int] = (40, 40),
                 num_classes: int = 10, duration_us: int = 100_000, substeps: int = 40,
                 threshold: float = 0.2, noise_hz: float = 2.0):
        self.split = split if split is not None else ("test" if test_mode else "train")
        if self.split not in SPLITS:
            raise ValueError(f"DvsGlyphs: split={split!r}: expected one of {list(SPLITS)}")
        if not 1 <= int(num_classes) <= 10:
            raise ValueError(f"DvsGlyphs: num_classes={num_classes!r}: expected 1..10")
        if int(num_samples) < 1:
            raise ValueError(f"DvsGlyphs: num_samples={num_samples!r}: expected >= 1")
        self.num_samples, self.seed, self.num_classes = int(num_samples), int(seed), int(num_classes)
        self.timestep, self.size = int(timestep), (int(size[0]), int(size[1]))
        if min(self.size) < 16:
            raise ValueError(f"DvsGlyphs: size={tuple(size)!r}: expected at least 16x16")
        self.duration_us, self.substeps = int(duration_us), int(substeps)
        self.threshold, self.noise_hz = float(threshold), float(noise_hz)
        if classes is None:
            classes = self.CLASSES[:self.num_classes]
        super().__init__(data_prefix, pipeline, classes, test_mode)

    @property
    def source(self) -> str:
        return f"DvsGlyphs(split={self.split!r}, seed={self.seed})"

    def load_annotations(self) -> list[dict]:
        return [{"gt_label": np.int64(i % self.num_classes), "index": i} for i in range(self.num_samples)]

    def load_sample(self, info: dict) -> dict:
        results = dict(info)
        results["img"] = self.frames(int(info["index"]))
        return results

    # ------------------------------------------------------------------ generation
    def label(self, i: int) -> int:
        return int(i) % self.num_classes

    def _rng(self, i: int) -> np.random.Generator:
        if not 0 <= int(i) < self.num_samples:
            raise IndexError(f"DvsGlyphs: index {i} out of range for {self.num_samples} samples")
        return np.random.default_rng([self.seed, SPLITS.index(self.split), int(i)])

    def events(self, i: int) -> np.ndarray:
        """The event stream of sample ``i`` (:data:`EVENT_DTYPE`, sorted by time)."""
        rng = self._rng(i)
        H, W = self.size
        K = self.substeps
        glyph = FONT[self.label(i)]
        scale = rng.uniform(0.085, 0.11) * min(H, W)           # pixels per font cell
        angle = rng.uniform(-0.25, 0.25)
        bg, contrast = rng.uniform(0.15, 0.35), rng.uniform(0.45, 0.8)
        # straight-line path of the glyph centre that stays inside the central region
        direction = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.2, 0.35) * min(H, W)
        dxy = dist * np.array([np.cos(direction), np.sin(direction)])
        lo, hi = 0.3 * np.array([W, H]), 0.7 * np.array([W, H])
        mid = rng.uniform(lo + np.abs(dxy) / 2, hi - np.abs(dxy) / 2)
        frac = np.linspace(-0.5, 0.5, K)[:, None]
        centres = mid + frac * dxy                               # [K, 2] (x, y)
        # render K images: pixel centre -> glyph cell coordinates (rotation + scale)
        ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
        ca, sa = np.cos(angle), np.sin(angle)
        rx = xs[None] - centres[:, 0, None, None]
        ry = ys[None] - centres[:, 1, None, None]
        u = (ca * rx + sa * ry) / scale + (glyph.shape[1] - 1) / 2
        v = (-sa * rx + ca * ry) / scale + (glyph.shape[0] - 1) / 2
        g = np.clip((_bilinear(glyph, u, v) - 0.5) * 2.5 + 0.5, 0.0, 1.0)
        logi = np.log(bg + contrast * g)                          # [K, H, W]
        # DVS pixels: events each time log intensity moves by a threshold from the reference
        thr = np.clip(self.threshold + rng.normal(0, 0.02, (H, W)), 0.05, None)
        ref = logi[0].copy()
        dt = self.duration_us / K
        ts, xs_e, ys_e, ps = [], [], [], []
        for k in range(1, K):
            d = logi[k] - ref
            n = np.floor(np.abs(d) / thr).astype(np.int64)
            if not n.any():
                continue
            ref += np.sign(d) * n * thr
            flat = np.flatnonzero(n)
            rep = np.repeat(flat, n.ravel()[flat])
            ts.append(((k - rng.uniform(0, 1, rep.size)) * dt).astype(np.int64))
            ys_e.append(rep // W)
            xs_e.append(rep % W)
            ps.append((d.ravel()[rep] > 0).astype(np.int8))
        n_noise = rng.poisson(self.noise_hz * H * W * self.duration_us * 1e-6)
        ts.append(rng.integers(0, self.duration_us, n_noise))
        ys_e.append(rng.integers(0, H, n_noise))
        xs_e.append(rng.integers(0, W, n_noise))
        ps.append(rng.integers(0, 2, n_noise).astype(np.int8))
        ev = np.empty(sum(len(t) for t in ts), EVENT_DTYPE)
        ev["t"], ev["x"], ev["y"], ev["p"] = (np.concatenate(a) for a in (ts, xs_e, ys_e, ps))
        return ev[np.argsort(ev["t"], kind="stable")]

    def frames(self, i: int) -> np.ndarray:
        """uint8 ``[T, 2, H, W]`` per-polarity event counts of sample ``i`` (no pipeline)."""
        return events_to_frames(self.events(i), self.timestep, self.size, split_by="time",
                                t_range=(0, self.duration_us), dtype=np.uint8)
