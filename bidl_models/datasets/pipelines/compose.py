"""``Compose`` and the helpers every pipeline step shares.

A pipeline step takes the sample dict and returns a dict (the user guide's pipeline). Frames are
numpy ``[T, C, H, W]`` until ``ToTensorType``/``ToTensor``. Random steps draw from numpy's global
RNG (``bidl_models.train`` seeds it); steps with a ``seed`` argument draw from a generator seeded by
``(seed, sample_idx)`` instead, so a sample's result does not depend on the order samples are read.

Keys: a step's ``keys`` name entries of the sample dict. BIDL's configs for CIFAR10-DVS / DVS128
Gesture / MNIST-DVS pass ``keys=[0]`` (there a sample was a ``(frames, label)`` tuple and the step
ignored its keys); integer keys are read as positions in that tuple: ``0`` is ``img``, ``1`` is
``gt_label``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ...registry import PIPELINES

TUPLE_KEYS = ("img", "gt_label")


def dict_key(k: Any, step: str) -> str:
    """A sample-dict key from a config key (an int is a position in BIDL's ``(img, gt_label)`` tuple)."""
    if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
        if not 0 <= int(k) < len(TUPLE_KEYS):
            raise ValueError(f"{step}: key {k!r}: integer keys are positions in (img, gt_label): 0 or 1")
        return TUPLE_KEYS[int(k)]
    if not isinstance(k, str):
        raise ValueError(f"{step}: key {k!r}: expected a string (or 0 / 1)")
    return k


def dict_keys(keys: Sequence[Any] | str, step: str) -> tuple[str, ...]:
    if isinstance(keys, (str, int)):
        keys = [keys]
    return tuple(dict_key(k, step) for k in keys)


def hw(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair; ValueError naming the step otherwise."""
    if isinstance(size, (int, np.integer)) and int(size) > 0:
        return int(size), int(size)
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(s, (int, np.integer)) and int(s) > 0 for s in size)):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name}: size={size!r}: expected a positive int or (height, width)")


def get(results: Mapping[str, Any], key: str, step: str) -> Any:
    if key not in results:
        raise KeyError(f"{step}: the sample has no key {key!r} (keys: {sorted(map(str, results))})")
    return results[key]


def video(results: Mapping[str, Any], key: str, step: str, ndim: Optional[int] = None) -> np.ndarray:
    """``results[key]`` as a numpy array ``[..., H, W]`` (exactly ``ndim`` dims if given)."""
    img = get(results, key, step)
    if isinstance(img, torch.Tensor):
        img = img.numpy()
    if not isinstance(img, np.ndarray) or img.ndim < 3 or (ndim is not None and img.ndim != ndim):
        want = "[T, C, H, W]" if ndim in (None, 4) else f"{ndim}-D"
        raise ValueError(f"{step}: results[{key!r}] must be a numpy array {want}; got "
                         f"{type(img).__name__} {list(getattr(img, 'shape', []))}")
    return img


def sample_rng(seed: Optional[int], results: Mapping[str, Any]) -> np.random.Generator:
    """A Generator seeded by ``(seed, sample_idx)``, or (``seed=None``) by one draw from numpy's global
    RNG, so unseeded steps follow ``np.random.seed``."""
    if seed is None:
        return np.random.default_rng(np.random.randint(0, 2**63 - 1, dtype=np.int64))
    return np.random.default_rng([int(seed), int(results.get("sample_idx", 0))])


def resize_frames(frames: np.ndarray, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize the last two dims of ``frames`` to ``size=(h, w)``.

    'bilinear': pixel-centre (half-pixel) sampling without antialiasing, the sampling rule of OpenCV's
    ``INTER_LINEAR`` that BIDL uses (OpenCV's fixed-point uint8 arithmetic may differ by one count); 'nearest': the pixel whose centre is nearest
    (``floor((i + 0.5) * H / h)``); 'area': block averages (``F.interpolate(mode='area')``). Integer
    input is rounded half away from zero and clipped to its dtype's range (never wrapped); float
    input keeps its dtype.
    """
    if interpolation not in ("bilinear", "nearest", "area"):
        raise ValueError(f"interpolation={interpolation!r}: expected 'bilinear', 'nearest' or 'area'")
    h, w = size
    H, W = frames.shape[-2:]
    if (H, W) == (h, w):
        return frames.copy()
    if interpolation == "nearest":
        rows = ((np.arange(h) + 0.5) * H / h).astype(np.int64)
        cols = ((np.arange(w) + 0.5) * W / w).astype(np.int64)
        return np.ascontiguousarray(frames[..., rows[:, None], cols[None, :]])
    lead = frames.shape[:-2]
    x = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float64)).reshape(1, -1, H, W)
    if interpolation == "bilinear":
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    else:
        y = F.interpolate(x, size=(h, w), mode="area")
    out = y.reshape(lead + (h, w)).numpy()
    if np.issubdtype(frames.dtype, np.integer) or frames.dtype == np.bool_:
        info = np.iinfo(frames.dtype) if frames.dtype != np.bool_ else None
        out = np.sign(out) * np.floor(np.abs(out) + 0.5)
        if info is not None:
            out = np.clip(out, info.min, info.max)
    return out.astype(frames.dtype)


class Compose:
    """Apply pipeline steps in order; steps are config dicts (built from PIPELINES) or callables."""

    def __init__(self, steps: Sequence[Any] = ()):
        if isinstance(steps, Compose):
            steps = steps.steps
        self.steps: list[Callable[[dict], dict]] = []
        for i, s in enumerate(steps or ()):
            if isinstance(s, Mapping):
                self.steps.append(PIPELINES.build(s, f"pipeline[{i}]"))
            elif callable(s):
                self.steps.append(s)
            else:
                raise ValueError(f"pipeline[{i}]={s!r}: expected a dict with a 'type' key or a callable")

    def __call__(self, results: dict) -> dict:
        for s in self.steps:
            results = s(results)
            if not isinstance(results, dict):
                raise TypeError(f"pipeline step {s!r} returned {type(results).__name__}, expected a dict")
        return results

    def __repr__(self) -> str:
        return f"Compose({self.steps!r})"
