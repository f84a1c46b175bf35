"""LUNA16 nodule classification crops (``Luna16Cls``, ``Luna16Cls32``), as BIDL prepares them.

``data_prefix`` is a folder of ``.npy`` files, one sample each; the label is the first character of
the file name (``0`` or ``1``). ``Luna16Cls``: arrays ``[T, H, W, C]``; ``Luna16Cls32``: ``[T, H, W]``
(one channel, 8x32x32 in BIDL's config). ``img`` is ``[T, C, H, W]`` (dtype kept), read when the
sample is used. Files are taken in sorted name order.
"""
from __future__ import annotations


import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .files import load_array, missing


@DATASETS.register()
class Luna16Cls(BaseDataset):
    """LUNA16 crops ``[T, H, W, C]`` -> ``[T, C, H, W]``; 2 classes."""

    CLASSES = ["malignant", "benign"]
    NDIM = 4

    def load_annotations(self) -> list[dict]:
        root = self.need_prefix()
        files = sorted(root.glob("*.npy")) if root.is_dir() else []
        if not files:
            raise missing(type(self).__name__, [f"{root}/<label><name>.npy files"],
                          "made by BIDL's prepare_Luna16.py")
        infos = []
        for f in files:
            if not f.name[0].isdigit():
                raise ValueError(f"{type(self).__name__}: {str(f)!r}: the file name must start with the label digit")
            infos.append({"file": str(f), "gt_label": np.int64(int(f.name[0]))})
        return infos

    def load_sample(self, info: dict) -> dict:
        results = dict(info)
        arr = load_array(results["file"], type(self).__name__, None, self.NDIM,
                         "[T, H, W, C]" if self.NDIM == 4 else "[T, H, W]")
        results["img"] = np.ascontiguousarray(arr.transpose(0, 3, 1, 2) if arr.ndim == 4 else arr[:, None])
        return results


@DATASETS.register()
class Luna16Cls32(Luna16Cls):
    """LUNA16 crops ``[T, H, W]`` -> ``[T, 1, H, W]``; 2 classes."""

    NDIM = 3
