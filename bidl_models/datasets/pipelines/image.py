"""Steps on single images ``[H, W]`` or ``[C, H, W]`` (MNIST before a spike encoder)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from ...registry import PIPELINES
from .compose import dict_keys, get, resize_frames
from .video import ResizeVideo, _short_side_size, _target_size


@PIPELINES.register()
class Resize:
    """Resize an image ``[H, W]`` or ``[C, H, W]`` (numpy or tensor; channel-first, as the encoders
    expect) to ``size``: an int, ``(h, w)`` or ``(s, -1)`` (short side). ``interpolation`` 'bilinear'
    (BIDL's default), 'nearest' or 'area'; ``backend`` accepted and ignored. The dtype is kept (BIDL's
    version also turned a PIL image into floats in [0, 1]; the ``MNIST`` dataset here already gives
    float32 pixels in [0, 1])."""

    def __init__(self, size: Any, interpolation: str = "bilinear", backend: Optional[str] = None,
                 keys: Sequence[Any] = ("img",)):
        self.size = _short_side_size(size, "Resize")
        if interpolation not in ResizeVideo.MODES:
            raise ValueError(f"Resize: interpolation={interpolation!r}: expected one of {list(ResizeVideo.MODES)}")
        self.interpolation, self.keys = interpolation, dict_keys(keys, "Resize")

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            img = get(results, k, "Resize")
            img = img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
            if img.ndim not in (2, 3):
                raise ValueError(f"Resize: results[{k!r}] has shape {list(img.shape)}; expected [H, W] or [C, H, W]")
            out = resize_frames(img, _target_size(self.size, *img.shape[-2:]), self.interpolation)
            results[k] = out
            results["img_shape"] = tuple(out.shape)
        return results
