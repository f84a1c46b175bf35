"""IMDB sentiment as token ids (BIDL's ``pre_imdb.py`` output: vocabulary of 1000 words + unknown).

``data_prefix``: an ``.npy`` of int token ids ``[N, L]`` (L = 500); ``ann_file``: an ``.npy`` of labels
``[N]`` (0 negative, 1 positive). A sample's ``img`` is int64 ``[L]`` (the sequence is the time axis:
one token per step), ``gt_label`` int64. Arrays are memory-mapped, not read whole.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .files import missing


@DATASETS.register("imdb", "Imdb")
class Imdb(BaseDataset):
    """IMDB reviews as token ids, 2 classes (module docstring)."""

    CLASSES = ["neg", "pos"]

    def load_annotations(self) -> list[dict]:
        tokens_file = self.need_prefix()
        if not tokens_file.is_file():
            raise missing("imdb", [f"{tokens_file} (token ids [N, L], made by BIDL's pre_imdb.py)"])
        labels_file = self.resolve_ann_file()
        try:
            self.tokens = np.load(tokens_file, mmap_mode="r", allow_pickle=False)
            labels = np.load(labels_file, allow_pickle=False).reshape(-1)
        except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
            raise ValueError(f"imdb {str(tokens_file)!r} / {str(labels_file)!r} cannot be read: "
                             f"{type(e).__name__}: {e}") from None
        if self.tokens.ndim != 2 or len(self.tokens) != len(labels) or not np.issubdtype(self.tokens.dtype, np.integer):
            raise ValueError(f"imdb {str(tokens_file)!r}: tokens {self.tokens.dtype} {list(self.tokens.shape)}, labels "
                             f"{list(labels.shape)}; expected integer [N, L] and [N]")
        return [{"index": i, "gt_label": np.int64(int(round(float(l))))} for i, l in enumerate(labels)]

    def load_sample(self, info: dict) -> dict:
        results = dict(info)
        results["img"] = np.array(self.tokens[int(results.pop("index"))], dtype=np.int64)
        return results

    @property
    def source(self) -> str:
        return str(Path(self.data_prefix)) if self.data_prefix else "imdb"
