"""MNIST from its idx files, for the spike-encoder configs (``Resize`` + ``Rate`` / ``Temporal`` /
``Population``).

``data_prefix`` is the folder with ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each may also be ``.gz``), as BIDL's
``data/MNIST/raw/``. ``test_mode`` picks the t10k files. A sample's ``img`` is float32 ``[28, 28]``
pixel intensities in [0, 1] (the byte / 255), ``gt_label`` the digit.

idx format (big-endian): two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), the number of dimensions, one uint32 per dimension, then the data.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .files import missing, read_bytes

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FILES = {False: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         True: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an idx file (``.gz`` decompressed); ValueError naming the file if malformed."""
    raw = read_bytes(path, "idx file")
    if str(path).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as e:
            raise ValueError(f"idx file {str(path)!r}: not a valid .gz ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"idx file {str(path)!r}: bad magic {raw[:4].hex()}; expected 0000<type><ndim>")
    nd = raw[3]
    if len(raw) < 4 + 4 * nd:
        raise ValueError(f"idx file {str(path)!r}: truncated header")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", nd, 4))
    dt = np.dtype(IDX_TYPES[raw[2]])
    n = int(np.prod(shape)) if shape else 1
    body = raw[4 + 4 * nd:]
    if len(body) != n * dt.itemsize:
        raise ValueError(f"idx file {str(path)!r}: {len(body)} data bytes for shape {list(shape)} of {dt.name}: "
                         "truncated or corrupt")
    return np.frombuffer(body, dt).reshape(shape).astype(dt.newbyteorder("="))


def write_idx(path: str | Path, arr: np.ndarray) -> None:
    """Write ``arr`` as an idx file (``.gz`` compressed if the name says so)."""
    arr = np.asarray(arr)
    code = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"write_idx: dtype {arr.dtype} has no idx type code")
    raw = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, ">u4").tobytes() + \
        arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)


@DATASETS.register()
class MNIST(BaseDataset):
    """MNIST digits from idx files (module docstring)."""

    CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
               "8 - eight", "9 - nine"]

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False, ann_file: Optional[str] = None):
        super().__init__(data_prefix, pipeline, classes, test_mode, ann_file)

    def find(self, name: str) -> Path:
        root = self.need_prefix()
        for c in (root / name, root / (name + ".gz")):
            if c.is_file():
                return c
        raise missing("MNIST", [f"{root / name}[.gz]"], "the idx files of http://yann.lecun.com/exdb/mnist/")

    def load_annotations(self) -> list[dict]:
        img_file, lbl_file = (self.find(n) for n in FILES[self.test_mode])
        self.images, labels = read_idx(img_file), read_idx(lbl_file)
        if self.images.ndim != 3 or labels.ndim != 1 or len(self.images) != len(labels):
            raise ValueError(f"MNIST {str(img_file)!r} / {str(lbl_file)!r}: images {list(self.images.shape)} and "
                             f"labels {list(labels.shape)}; expected [N, H, W] and [N]")
        return [{"index": i, "gt_label": np.int64(l)} for i, l in enumerate(labels)]

    def load_sample(self, info: dict) -> dict:
        results = dict(info)
        results["img"] = self.images[int(results.pop("index"))].astype(np.float32) / np.float32(255)
        return results
