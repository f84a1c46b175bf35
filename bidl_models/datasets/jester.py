"""20BN-Jester hand gestures (RGB video frames as jpg files), 27 classes.

``data_prefix``: the dataset folder, with the videos at ``<data_prefix>/frames/<video>/<frame files>``;
``ann_file`` (found as given or under ``data_prefix``), either

* BIDL's csv (``train.csv`` / ``val.csv``, made by its ``pre_jester_csv.py``): a header line, then
  ``video,class,label,frames,height,width`` with the frame file names joined by ``|``; or
* 20BN's own list (``jester-v1-train.csv`` / ``jester-v1-validation.csv``, which BIDL's T=8 configs
  name): ``video;class name`` per line, no header. The frame names are then listed from the video's
  folder (sorted), the label is the class name's position in ``CLASSES``.

Videos with fewer than ``min_frames`` frames (BIDL: 16) are skipped. The ``LoadFramesInFolder`` step of
the pipeline reads the frames: the dataset gives ``video`` (folder) and ``frames`` (names).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .files import missing


@DATASETS.register()
class Jester20bn(BaseDataset):
    """20BN-Jester (module docstring)."""

    CLASSES = ["Doing other things", "Drumming Fingers", "No gesture", "Pulling Hand In", "Pulling Two Fingers In",
               "Pushing Hand Away", "Pushing Two Fingers Away", "Rolling Hand Backward", "Rolling Hand Forward",
               "Shaking Hand", "Sliding Two Fingers Down", "Sliding Two Fingers Left", "Sliding Two Fingers Right",
               "Sliding Two Fingers Up", "Stop Sign", "Swiping Down", "Swiping Left", "Swiping Right", "Swiping Up",
               "Thumb Down", "Thumb Up", "Turning Hand Clockwise", "Turning Hand Counterclockwise",
               "Zooming In With Full Hand", "Zooming In With Two Fingers", "Zooming Out With Full Hand",
               "Zooming Out With Two Fingers"]

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, ann_file: Optional[str] = None, test_mode: bool = False,
                 min_frames: int = 16):
        self.min_frames = int(min_frames)
        super().__init__(data_prefix, pipeline, classes, test_mode, ann_file)

    def load_annotations(self) -> list[dict]:
        root = self.need_prefix()
        frames_root = root / "frames"
        if not frames_root.is_dir():
            raise missing("Jester20bn", [f"{frames_root}/<video>/<frame>.jpg"], "20BN-Jester frames")
        path = self.resolve_ann_file()
        with open(path, newline="") as fh:
            first = fh.readline()
            fh.seek(0)
            rows = self._bidl_rows(fh, path) if "," in first and ";" not in first else self._20bn_rows(fh, path)
        infos = []
        for video, label, frames, n in rows:
            if len(frames) < self.min_frames:
                continue
            infos.append({"video": str(frames_root / video), "frames": frames, "gt_label": np.int64(label)})
        return infos

    def _bidl_rows(self, fh: Any, path: Path) -> list[tuple[str, int, list[str], int]]:
        rows = []
        for n, row in enumerate(csv.reader(fh), 1):
            if n == 1 or not row:
                continue  # header
            if len(row) < 6:
                raise ValueError(f"Jester20bn {str(path)!r} line {n}: {len(row)} fields; expected "
                                 "video,class,label,frames,height,width")
            try:
                label = int(row[2])
            except ValueError:
                raise ValueError(f"Jester20bn {str(path)!r} line {n}: label {row[2]!r} is not an int") from None
            rows.append((row[0], label, [f for f in row[3].split("|") if f], n))
        return rows

    def _20bn_rows(self, fh: Any, path: Path) -> list[tuple[str, int, list[str], int]]:
        index = {c: i for i, c in enumerate(self.CLASSES or ())}
        frames_root = self.need_prefix() / "frames"
        rows = []
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            video, _, name = line.partition(";")
            if name not in index:
                raise ValueError(f"Jester20bn {str(path)!r} line {n}: class {name!r} is not one of the "
                                 f"{len(index)} classes")
            d = frames_root / video
            if not d.is_dir():
                raise FileNotFoundError(f"Jester20bn {str(path)!r} line {n}: video folder {str(d)!r}: no such folder")
            rows.append((video, index[name], sorted(os.listdir(d)), n))
        return rows
