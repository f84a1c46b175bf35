"""RGB-Gesture (frame-difference events from an RGB camera), BIDL's preprocessed pickles.

``<data_prefix>/<ann_file>`` (``train.pkl`` / ``val.pkl``) holds a pickle of ``[data, labels]``:
``data`` uint8 ``[N, T, C, H, W]`` (BIDL: 60 x 2 x 40 x 40), ``labels`` ``[N]``. Read with a restricted
unpickler (numpy arrays only). ``shape=(width, height)`` resizes every frame (bilinear; BIDL passed it
to ``cv2.resize``, hence width first).

Training (``test_mode=False``) doubles the set as BIDL does: sample ``N + i`` is sample ``i`` plus
per-pixel noise ``trunc(normal(0, jitter))`` shared by the C channels, clipped to 0..255. The noise is
drawn from ``default_rng([seed, i])`` (BIDL's was unseeded), so it is the same every run.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .files import safe_unpickle
from .pipelines.compose import resize_frames


@DATASETS.register()
class RgbGesture(BaseDataset):
    """RGB-Gesture, 11 classes (module docstring)."""

    CLASSES = ["Hand Clapping", "Left Hand Wave", "Right Hand Wave", "Left Arm CW", "Left Arm CCW", "Right Arm CW",
               "Right Arm CCW", "Arm Roll", "Air Drums", "Air Guitar", "Other"]

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, ann_file: Optional[str] = None, test_mode: bool = False,
                 shape: Optional[Sequence[int]] = None, jitter: float = 1, seed: int = 0):
        if shape is not None and (len(shape) != 2 or min(int(s) for s in shape) < 1):
            raise ValueError(f"RgbGesture: shape={shape!r}: expected (width, height)")
        if float(jitter) < 0:
            raise ValueError(f"RgbGesture: jitter={jitter!r}: expected >= 0")
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.jitter, self.seed = float(jitter), int(seed)
        super().__init__(data_prefix, pipeline, classes, test_mode, ann_file)

    def load_annotations(self) -> list[dict]:
        path = self.resolve_ann_file()
        try:
            data, labels = safe_unpickle(path.read_bytes())
            data, labels = np.asarray(data), np.asarray(labels).reshape(-1)
        except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
            raise ValueError(f"RgbGesture {str(path)!r} is not a pickle of [data, labels]: {type(e).__name__}: {e}") from None
        if data.ndim != 5 or len(data) != len(labels):
            raise ValueError(f"RgbGesture {str(path)!r}: data {list(data.shape)} / labels {list(labels.shape)}; "
                             "expected [N, T, C, H, W] and [N]")
        self.data = data
        n = len(data)
        infos = [{"index": i, "jitter": False, "gt_label": np.int64(labels[i])} for i in range(n)]
        if not self.test_mode:
            infos += [{"index": i, "jitter": True, "gt_label": np.int64(labels[i])} for i in range(n)]
        return infos

    def load_sample(self, info: dict) -> dict:
        results = dict(info)
        i = int(results.pop("index"))
        img = self.data[i]
        if results.pop("jitter"):
            T, _, H, W = img.shape
            noise = np.trunc(np.random.default_rng([self.seed, i]).normal(0, self.jitter, (T, 1, H, W)))
            img = np.clip(img.astype(np.int64) + noise.astype(np.int64), 0, 255).astype(img.dtype)
        if self.shape is not None:
            img = resize_frames(img, (self.shape[1], self.shape[0]), "bilinear")
        results["img"] = np.ascontiguousarray(img)
        return results
