"""Data pipelines: each step takes the sample dict and returns a dict (the user guide's pipeline).

Frames are numpy ``[T, C, H, W]`` until ``ToTensorType``/``ToTensor``. Random steps draw from numpy's
global RNG, which PyTorch's DataLoader reseeds per worker and ``bidl_models.train`` seeds.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..registry import PIPELINES

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "uint8": torch.uint8, "int64": torch.int64, "int32": torch.int32,
                "bool": torch.bool}


def _hw(size: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"{name}: size={size!r}: expected an int or (height, width)")


def _video(results: Mapping[str, Any], key: str, step: str) -> np.ndarray:
    if key not in results:
        raise KeyError(f"{step}: the sample has no key {key!r} (keys: {sorted(results)})")
    img = results[key]
    if not isinstance(img, np.ndarray) or img.ndim < 3:
        raise ValueError(f"{step}: results[{key!r}] must be a numpy array [T, C, H, W] (or [..., H, W]); got "
                         f"{type(img).__name__} {getattr(img, 'shape', '')}")
    return img


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


@PIPELINES.register()
class RandomCropVideo:
    """Zero-pad H and W by ``padding``, then crop a random ``size`` window (same for all frames)."""

    def __init__(self, size: int | Sequence[int], padding: Optional[int] = None, pad_val: float = 0,
                 keys: Sequence[str] = ("img",)):
        self.size = _hw(size, "RandomCropVideo")
        self.padding = int(padding or 0)
        if self.padding < 0:
            raise ValueError(f"RandomCropVideo: padding={padding!r}: expected >= 0")
        self.pad_val, self.keys = pad_val, tuple(keys)

    def __call__(self, results: dict) -> dict:
        top = left = None
        for k in self.keys:
            img = _video(results, k, "RandomCropVideo")
            p = self.padding
            if p:
                pad = [(0, 0)] * (img.ndim - 2) + [(p, p), (p, p)]
                img = np.pad(img, pad, constant_values=self.pad_val)
            H, W = img.shape[-2:]
            h, w = self.size
            if h > H or w > W:
                raise ValueError(f"RandomCropVideo: crop {h}x{w} larger than the padded frame {H}x{W} of {k!r}")
            if top is None:
                top, left = np.random.randint(0, H - h + 1), np.random.randint(0, W - w + 1)
            results[k] = np.ascontiguousarray(img[..., top:top + h, left:left + w])
        return results

    def __repr__(self) -> str:
        return f"RandomCropVideo(size={self.size}, padding={self.padding})"


@PIPELINES.register()
class RandomFlipVideo:
    """With probability ``flip_ratio`` flip every frame: 'horizontal' reverses W (left-right),
    'vertical' reverses H (up-down)."""

    AXES = {"horizontal": -1, "vertical": -2}

    def __init__(self, flip_ratio: float = 0.5, direction: str = "horizontal", keys: Sequence[str] = ("img",)):
        if direction not in self.AXES:
            raise ValueError(f"RandomFlipVideo: direction={direction!r}: expected one of {list(self.AXES)}")
        if not 0.0 <= float(flip_ratio) <= 1.0:
            raise ValueError(f"RandomFlipVideo: flip_ratio={flip_ratio!r}: expected in [0, 1]")
        self.flip_ratio, self.direction, self.keys = float(flip_ratio), direction, tuple(keys)

    def __call__(self, results: dict) -> dict:
        flip = np.random.rand() < self.flip_ratio
        results["flip"], results["flip_direction"] = bool(flip), self.direction
        if flip:
            for k in self.keys:
                img = _video(results, k, "RandomFlipVideo")
                results[k] = np.ascontiguousarray(np.flip(img, axis=self.AXES[self.direction]))
        return results

    def __repr__(self) -> str:
        return f"RandomFlipVideo(flip_ratio={self.flip_ratio}, direction={self.direction!r})"


@PIPELINES.register()
class ResizeDVS:
    """Resize every frame to ``size``: 'nearest' (pixel centres) or 'sum' (integer downscale that
    adds up the event counts of each block, so no event is lost)."""

    def __init__(self, size: int | Sequence[int], mode: str = "nearest", keys: Sequence[str] = ("img",)):
        self.size = _hw(size, "ResizeDVS")
        if mode not in ("nearest", "sum"):
            raise ValueError(f"ResizeDVS: mode={mode!r}: expected 'nearest' or 'sum'")
        self.mode, self.keys = mode, tuple(keys)

    def __call__(self, results: dict) -> dict:
        h, w = self.size
        for k in self.keys:
            img = _video(results, k, "ResizeDVS")
            H, W = img.shape[-2:]
            if self.mode == "sum":
                if H % h or W % w:
                    raise ValueError(f"ResizeDVS(mode='sum'): {H}x{W} -> {h}x{w} is not an integer downscale")
                fh, fw = H // h, W // w
                out = img.reshape(img.shape[:-2] + (h, fh, w, fw)).sum(axis=(-3, -1), dtype=np.int64)
                out = out.astype(img.dtype) if np.issubdtype(img.dtype, np.floating) else \
                    np.minimum(out, np.iinfo(img.dtype).max).astype(img.dtype)
            else:
                rows = ((np.arange(h) + 0.5) * H / h).astype(np.int64)
                cols = ((np.arange(w) + 0.5) * W / w).astype(np.int64)
                out = img[..., rows[:, None], cols[None, :]]
            results[k] = np.ascontiguousarray(out)
        return results

    def __repr__(self) -> str:
        return f"ResizeDVS(size={self.size}, mode={self.mode!r})"


@PIPELINES.register()
class ToTensorType:
    """``results[k]`` -> torch tensor of ``dtype`` (e.g. 'float32') for each key."""

    def __init__(self, keys: Sequence[str], dtype: str = "float32"):
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"ToTensorType: dtype={dtype!r}: expected one of {sorted(TORCH_DTYPES)}")
        self.keys, self.dtype = tuple(keys), dtype

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            if k not in results:
                raise KeyError(f"ToTensorType: the sample has no key {k!r} (keys: {sorted(results)})")
            v = results[k]
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(v)))
            results[k] = t.to(TORCH_DTYPES[self.dtype])
        return results

    def __repr__(self) -> str:
        return f"ToTensorType(keys={list(self.keys)}, dtype={self.dtype!r})"


@PIPELINES.register()
class ToTensor:
    """``results[k]`` -> torch tensor (dtype kept) for each key."""

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(keys)

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            if k not in results:
                raise KeyError(f"ToTensor: the sample has no key {k!r} (keys: {sorted(results)})")
            v = results[k]
            results[k] = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        return results

    def __repr__(self) -> str:
        return f"ToTensor(keys={list(self.keys)})"


@PIPELINES.register()
class Collect:
    """Keep only ``keys`` (plus ``img_metas`` with ``meta_keys`` if any are given)."""

    def __init__(self, keys: Sequence[str], meta_keys: Sequence[str] = ()):
        self.keys, self.meta_keys = tuple(keys), tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise KeyError(f"Collect: the sample has no key(s) {missing} (keys: {sorted(results)})")
        out = {k: results[k] for k in self.keys}
        if self.meta_keys:
            out["img_metas"] = {k: results[k] for k in self.meta_keys if k in results}
        return out

    def __repr__(self) -> str:
        return f"Collect(keys={list(self.keys)})"
