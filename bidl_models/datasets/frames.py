"""Event-frame datasets: the shared reader behind ``Cifar10Dvs``, ``DvsGesture``, ``DvsMnist``, ``NMnist``,
``FramesDataset`` and ``SpikingJellyFrames``.

A sample is ``img`` ``[T, C, H, W]`` frames (event counts or binary) and ``gt_label``. Sources, by what
``data_prefix`` names:

1. a preprocessed frame file of this project (``.pkl`` / ``.npz``, see :mod:`.files`; ``data/x/train``
   reads ``data/x/train.pkl`` or ``.npz``): written by ``python -m bidl_models.datasets.convert``;
2. a folder holding ``frames_number_<T>_split_by_<number|time>/`` (or that folder itself, or its
   ``train/`` / ``test/``), in either layout inside it:

   * BIDL 1.9's caches, reused as they are: ``<split>_datas.npy`` (CIFAR10-DVS, MNIST-DVS) or
     ``<split>/<split>_datas.npy`` (DVS128 Gesture), an object array of ``(frames uint8, label)``
     rows. Read without ``allow_pickle`` (a restricted unpickler: arrays only). BIDL stored counts
     as uint8, so counts above 255 are already wrapped in these files; they are read as stored.
   * SpikingJelly's frame folders: ``<class>/*.npz`` or ``<split>/<class>/*.npz``, each ``.npz``
     with the array ``frames`` ``[T, C, H, W]`` (read lazily, one file per sample).

   Labels: BIDL's files carry them; for SpikingJelly folders the label is the position of the class
   folder in sorted (lexicographic) order, the rule of SpikingJelly and torchvision, so a network
   trained there keeps its class indices. For DVS128 Gesture (folders ``0``..``10``) that order is
   ``0, 1, 10, 2, ...``: label 2 is folder ``10`` (other gestures), as in BIDL's caches; the dataset's
   ``CLASSES`` follow the same order. Without a ``train/``/``test/`` level (SpikingJelly's CIFAR10-DVS)
   the split is the deterministic per-class rule of :mod:`.splits` with ``train_ratio`` and ``seed``.

3. nothing (``data_prefix=None``), for the DVS datasets of BIDL's configs (which give only
   ``data.data_root``): BIDL's cache folder ``<data_root>/<BIDL_DIR>`` (``data/DVSCIFAR10``,
   ``data/DvsGesture``, ``data/DvsMnist``), read as in 2.

``frames_number`` / ``split_by`` pick among several ``frames_number_*`` folders (one present is used
as is); ``split`` ('train' / 'test') defaults to 'test' with ``test_mode`` and for the ``data.val`` /
``data.test`` keys of a config (see :func:`build_dataset`), else 'train'. Missing data raises one
line naming where the files are expected; nothing is downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .files import frame_file_candidates, load_array, load_frames_file, load_object_npy, missing
from .splits import natural_key, seeded_split

FRAMES_DIR = re.compile(r"^frames_number_(\d+)_split_by_(number|time)$")
SPLITS = ("train", "test")


def find_frames_dir(root: Path, frames_number: Optional[int], split_by: Optional[str], who: str
                    ) -> tuple[Path, Optional[str]]:
    """(the ``frames_number_*`` folder under ``root``, a split forced by the path or None)."""
    if root.name in SPLITS and FRAMES_DIR.match(root.parent.name):
        return root.parent, root.name
    if FRAMES_DIR.match(root.name):
        return root, None
    found = sorted((d for d in root.iterdir() if d.is_dir() and FRAMES_DIR.match(d.name)),
                   key=lambda d: natural_key(d.name)) if root.is_dir() else []
    ok = [d for d in found if (frames_number is None or int(FRAMES_DIR.match(d.name).group(1)) == int(frames_number))
          and (split_by is None or FRAMES_DIR.match(d.name).group(2) == split_by)]
    if not ok:
        want = f"frames_number_{frames_number if frames_number is not None else '<T>'}_split_by_{split_by or '<number|time>'}"
        have = f" (found only {[d.name for d in found]})" if found else ""
        raise missing(who, [f"{root / want}/ (BIDL's <split>_datas.npy or SpikingJelly's <class>/*.npz){have}"])
    if len(ok) > 1:
        raise ValueError(f"{who}: several frame folders under {str(root)!r}: {[d.name for d in ok]}; set "
                         "frames_number (and split_by) to pick one")
    return ok[0], None


def _bidl_rows(path: Path) -> list[dict]:
    """Samples of a BIDL ``*_datas.npy`` cache: rows ``(frames [T, C, H, W], label)``."""
    arr = load_object_npy(path)
    rows = list(arr) if arr.ndim == 1 else [tuple(r) for r in arr] if arr.ndim == 2 and arr.shape[1] == 2 else None
    if rows is None:
        raise ValueError(f"BIDL frame cache {str(path)!r}: array of shape {list(arr.shape)}; expected N rows of "
                         "(frames, label)")
    infos = []
    for i, row in enumerate(rows):
        if len(row) != 2:
            raise ValueError(f"BIDL frame cache {str(path)!r}: row {i} has {len(row)} fields; expected (frames, label)")
        frames, label = np.asarray(row[0]), row[1]
        if frames.ndim != 4:
            raise ValueError(f"BIDL frame cache {str(path)!r}: row {i} frames of shape {list(frames.shape)}; "
                             "expected [T, C, H, W]")
        infos.append({"img": frames, "gt_label": np.int64(int(np.asarray(label)))})
    return infos


def _class_dirs(d: Path) -> list[Path]:
    return [c for c in d.iterdir() if c.is_dir() and any(c.glob("*.npz"))] if d.is_dir() else []


class FramesSource:
    """Reads one frame folder (BIDL cache or SpikingJelly layout); see the module docstring."""

    def __init__(self, frames_dir: Path, split: str, folder_names: Optional[Sequence[str]], train_ratio: float,
                 seed: int, who: str):
        self.dir, self.split, self.who = frames_dir, split, who
        self.folder_names, self.train_ratio, self.seed = folder_names, float(train_ratio), int(seed)
        self.layout = ""

    def read(self) -> tuple[list[dict], list[str]]:
        """(infos, folder names in label order)."""
        F, s = self.dir, self.split
        for npy, layout in ((F / s / f"{s}_datas.npy", "BIDL (split folder)"), (F / f"{s}_datas.npy", "BIDL")):
            if npy.is_file():
                self.layout, self.source = layout, npy
                return _bidl_rows(npy), self.label_order([])
        for base, layout in ((F / s, "SpikingJelly (split folder)"), (F, "SpikingJelly")):
            dirs = _class_dirs(base)
            if dirs:
                self.layout, self.source = layout, base
                return self.read_npz_folders(dirs, split_here=base == F)
        raise missing(self.who, [f"{F / s / f'{s}_datas.npy'} or {F / f'{s}_datas.npy'} (BIDL)",
                                 f"{F / s}/<class>/*.npz or {F}/<class>/*.npz (SpikingJelly, key 'frames')"])

    def label_order(self, present: Sequence[str]) -> list[str]:
        names = list(self.folder_names) if self.folder_names is not None else list(present)
        return sorted(names)

    def read_npz_folders(self, dirs: list[Path], split_here: bool) -> tuple[list[dict], list[str]]:
        order = self.label_order([d.name for d in dirs])
        unknown = [d.name for d in dirs if d.name not in order]
        if unknown:
            raise ValueError(f"{self.who}: class folders {unknown} under {str(dirs[0].parent)!r} are not among the "
                             f"expected {order}")
        infos = []
        for d in sorted(dirs, key=lambda d: order.index(d.name)):
            label = order.index(d.name)
            files = sorted(d.glob("*.npz"), key=lambda p: natural_key(p.name))
            if split_here:
                train, test = seeded_split(files, self.seed, label, 1.0 - self.train_ratio)
                files = train if self.split == "train" else test
            infos += [{"file": str(f), "gt_label": np.int64(label)} for f in files]
        return infos, order


@DATASETS.register()
class FramesDataset(BaseDataset):
    """Event frames from a preprocessed file or a BIDL / SpikingJelly frame folder (module docstring).

    Subclasses set ``CLASSES``, ``FOLDER_NAMES`` (the class folder name of each entry of ``CLASSES``
    in BIDL's / SpikingJelly's layouts) and ``BIDL_DIR`` (BIDL's cache folder under ``data_root``).
    """

    BIDL_DIR: Optional[str] = None
    FOLDER_NAMES: Optional[Sequence[str]] = None

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False, data_root: str = "data",
                 frames_number: Optional[int] = None, split_by: Optional[str] = None, split: Optional[str] = None,
                 train_ratio: float = 0.9, seed: int = 0):
        who = type(self).__name__
        if data_prefix is None and self.BIDL_DIR is None:
            raise ValueError(f"{who}: data_prefix is required (a preprocessed frame file or a frames folder)")
        self.split = split if split is not None else ("test" if test_mode else "train")
        if self.split not in SPLITS:
            raise ValueError(f"{who}: split={split!r}: expected one of {list(SPLITS)}")
        if split_by not in (None, "number", "time"):
            raise ValueError(f"{who}: split_by={split_by!r}: expected 'number' or 'time'")
        if frames_number is not None and (isinstance(frames_number, bool) or int(frames_number) < 1):
            raise ValueError(f"{who}: frames_number={frames_number!r}: expected a positive int")
        if not 0 < float(train_ratio) < 1:
            raise ValueError(f"{who}: train_ratio={train_ratio!r}: expected in (0, 1)")
        self.data_root, self.frames_number, self.split_by = str(data_root), frames_number, split_by
        self.train_ratio, self.seed = float(train_ratio), int(seed)
        self.file: Optional[Path] = None
        self.frames_source: Optional[FramesSource] = None
        self.meta: dict = {}
        self._user_classes = classes is not None
        super().__init__(data_prefix, pipeline, classes, test_mode)

    @property
    def source(self) -> str:
        if self.file is not None:
            return str(self.file)
        if self.frames_source is not None:
            return f"{self.frames_source.source} ({self.frames_source.layout}, {self.split})"
        return self.data_prefix or type(self).__name__

    def load_annotations(self) -> list[dict]:
        who = type(self).__name__
        if self.data_prefix is not None:
            cands = frame_file_candidates(self.data_prefix)
            hit = next((c for c in cands if c.is_file()), None)
            if hit is not None:
                self.file = hit
                infos, classes, self.meta = load_frames_file(hit)
                if classes and type(self).CLASSES is None and not self._user_classes:
                    self.CLASSES = list(classes)
                return infos
            root = Path(self.data_prefix)
            if not root.is_dir():
                raise FileNotFoundError(
                    f"{who} data_prefix={str(self.data_prefix)!r}: no preprocessed dataset file (looked for "
                    f"{[str(c) for c in cands]}) and no frames folder; make one from the raw dataset with "
                    "`python -m bidl_models.datasets.convert --dataset NAME --root RAW_DIR --out OUT_DIR`, or "
                    "point data_prefix at a BIDL / SpikingJelly frames_number_<T>_split_by_<number|time> folder")
        else:
            root = Path(self.data_root) / str(self.BIDL_DIR)
            if not root.is_dir():
                raise missing(who, [f"BIDL's frame cache {root}/frames_number_<T>_split_by_number/",
                                    "a SpikingJelly frames folder there",
                                    "a data_prefix made by `python -m bidl_models.datasets.convert`"],
                              f"data_root={self.data_root!r}")
        frames_dir, forced = find_frames_dir(root, self.frames_number, self.split_by, who)
        if forced is not None:
            self.split = forced
        self.frames_source = FramesSource(frames_dir, self.split, self.FOLDER_NAMES, self.train_ratio, self.seed, who)
        infos, order = self.frames_source.read()
        if not self._user_classes:
            self.CLASSES = self.names_for(order)
        return infos

    def names_for(self, folder_order: Sequence[str]) -> Optional[list[str]]:
        """Class names in the label order of a BIDL / SpikingJelly source."""
        if type(self).CLASSES is None or self.FOLDER_NAMES is None:
            return list(folder_order) if folder_order else None
        return [type(self).CLASSES[list(self.FOLDER_NAMES).index(f)] for f in sorted(self.FOLDER_NAMES)]

    def load_sample(self, info: dict) -> dict:
        if "file" not in info:
            return super().load_sample(info)
        results = dict(info)
        results["img"] = load_array(results.pop("file"), type(self).__name__, "frames", 4, "frames [T, C, H, W]")
        return results


@DATASETS.register()
class SpikingJellyFrames(FramesDataset):
    """Any SpikingJelly frame folder (``data_prefix`` = its dataset root, or the ``frames_number_*``
    folder): class names are the sorted class folder names, labels their positions."""
