"""Loading steps: frames of a video folder (Jester) and per-sample ``.npz`` files (ES-ImageNet)."""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import numpy as np

from ...registry import PIPELINES
from ..files import load_array
from .compose import get


def pil_rgb(path: str) -> np.ndarray:
    """An image file as uint8 ``[H, W, 3]`` RGB (Pillow, imported when first needed)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is installed with matplotlib / the dev extra
        raise ImportError("reading video frames needs Pillow: `pip install pillow`") from None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"video frame {path!r}: no such file") from None
    except OSError as e:
        raise ValueError(f"video frame {path!r} cannot be decoded: {e}") from None


@PIPELINES.register()
class LoadFramesInFolder:
    """Read ``n_frame`` frames of a video stored as image files in a folder.

    The sample gives ``video`` (the folder) and ``frames`` (its image file names in time order; a video
    with fewer than ``n_frame`` is extended by repeating it from the start). Frames are picked at a
    stride ``dt``: ``round(i * dt)`` for ``i < n_frame`` from a start index.

    * ``random=True`` (training): ``down_t=(lo, hi)`` draws ``dt`` uniformly in ``[lo, hi]``;
      ``(lo, hi, sigma)`` from a normal around the middle with ``sigma`` (draws outside ``[lo, hi]``
      become the middle); ``hi`` is first trimmed to ``max(1 + 1e-5, length / n_frame)``. The start is
      uniform over the positions that fit; each frame is then zeroed with probability ``dropout``.
    * ``random=False`` (test): ``down_t=(dt,)``, trimmed to ``length / n_frame``; the clip is centred.

    Sets ``img`` uint8 ``[n_frame, 3, H, W]`` (RGB) and ``frame_inds`` (int64 ``[n_frame]``) and removes
    the ``frames`` list (so samples batch). ``img_loader``: a callable path -> ``[H, W, 3]`` uint8
    (default: Pillow, RGB).
    """

    def __init__(self, n_frame: int = 16, down_t: Sequence[float] = (1,), img_loader: Optional[Callable] = None,
                 dropout: float = 0.0, random: bool = True):
        if int(n_frame) < 1:
            raise ValueError(f"LoadFramesInFolder: n_frame={n_frame!r}: expected >= 1")
        down_t = tuple(float(d) for d in down_t)
        if random and (len(down_t) not in (2, 3) or not 0 < down_t[0] < down_t[1]):
            raise ValueError(f"LoadFramesInFolder: down_t={down_t!r} with random=True: expected (lo, hi) or "
                             "(lo, hi, sigma) with 0 < lo < hi")
        if not random and (len(down_t) != 1 or down_t[0] <= 0):
            raise ValueError(f"LoadFramesInFolder: down_t={down_t!r} with random=False: expected (dt,), dt > 0")
        if not 0 <= float(dropout) < 1:
            raise ValueError(f"LoadFramesInFolder: dropout={dropout!r}: expected in [0, 1)")
        if img_loader is not None and not callable(img_loader):
            raise ValueError("LoadFramesInFolder: img_loader must be a callable (path -> [H, W, 3] uint8)")
        self.n_frame, self.down_t, self.dropout, self.random = int(n_frame), down_t, float(dropout), bool(random)
        self.img_loader = img_loader or pil_rgb

    def indices(self, length: int) -> np.ndarray:
        """Frame indices into a video of ``length`` frames (after repeating it to ``n_frame``)."""
        n = self.n_frame
        length = max(length, n)
        dt_max = length / n
        if self.random:
            lo, hi = self.down_t[0], min(self.down_t[1], max(1 + 1e-5, dt_max))
            if len(self.down_t) == 2:
                dt = np.random.uniform(lo, hi)
            else:
                dt = np.random.normal((lo + hi) / 2, self.down_t[2])
                dt = dt if lo <= dt <= hi else (lo + hi) / 2
        else:
            dt = min(self.down_t[0], dt_max)
        rel = np.round(np.arange(n) * dt).astype(np.int64)
        span = int(rel[-1]) + 1
        start = np.random.randint(0, length - span + 1) if self.random else (length - span) // 2
        return start + rel

    def __call__(self, results: dict) -> dict:
        folder = str(get(results, "video", "LoadFramesInFolder"))
        names = list(get(results, "frames", "LoadFramesInFolder"))
        if not names:
            raise ValueError(f"LoadFramesInFolder: video {folder!r} has no frames")
        inds = self.indices(len(names))
        clip = np.stack([self.img_loader(os.path.join(folder, names[i % len(names)])) for i in inds])
        if clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"LoadFramesInFolder: frames of {folder!r} decode to {list(clip.shape[1:])}; "
                             "expected [H, W, 3]")
        clip = np.ascontiguousarray(clip.transpose(0, 3, 1, 2))
        if self.random and self.dropout > 0:
            clip[np.random.rand(len(clip)) < self.dropout] = 0
        results.pop("frames")
        results["img"], results["frame_inds"] = clip, inds % len(names)
        results["img_shape"] = tuple(clip.shape)
        return results


@PIPELINES.register()
class LoadNumpy:
    """Read ``<img_prefix>/<img_info>`` (an ``.npz`` with the array ``key``, default ``arr_0``,
    ``[C, T, H, W]`` as ES-ImageNet ships; or an ``.npy``) into ``img`` ``[T, C, H, W]`` (axes 0 and 1
    swapped, as BIDL). No pickles."""

    def __init__(self, key: str = "arr_0"):
        self.key = key

    def __call__(self, results: dict) -> dict:
        path = os.path.join(str(get(results, "img_prefix", "LoadNumpy")), str(get(results, "img_info", "LoadNumpy")))
        data = load_array(path, "LoadNumpy", self.key, 4, "[C, T, H, W]")
        results["img"] = np.ascontiguousarray(data.transpose(1, 0, 2, 3))
        results["img_shape"] = tuple(results["img"].shape)
        return results
