"""ES-ImageNet (event-stream ImageNet, 2 x 224 x 224, T=8), 1000 classes.

``ann_file``: a csv without header, one ``<file>,<label>`` row per sample (BIDL's
``trainlabel.csv`` / ``vallabel.csv``); ``data_prefix``: the folder the files are in. The ``LoadNumpy``
step of the pipeline reads each ``.npz`` (``arr_0`` ``[C, T, H, W]``) into ``img`` ``[T, C, H, W]``;
the dataset gives ``img_prefix`` and ``img_info`` (BIDL's keys). Class names are the label numbers.
"""
from __future__ import annotations

import csv

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset


@DATASETS.register()
class ESImagenet(BaseDataset):
    """ES-ImageNet (module docstring)."""

    CLASSES = [str(i) for i in range(1000)]

    def load_annotations(self) -> list[dict]:
        path = self.resolve_ann_file()
        prefix = str(self.need_prefix())
        infos = []
        with open(path, newline="") as fh:
            for n, row in enumerate(csv.reader(fh), 1):
                if not row or not row[0].strip():
                    continue
                try:
                    label = int(row[1])
                except (IndexError, ValueError):
                    raise ValueError(f"ESImagenet {str(path)!r} line {n}: {row!r}: expected <file>,<label>") from None
                infos.append({"img_prefix": prefix, "img_info": row[0].strip(), "gt_label": np.int64(label)})
        return infos
