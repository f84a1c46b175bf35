"""Datasets read from preprocessed frame files (``.pkl`` guide layout or ``.npz``; see ``base``).

``data_prefix`` names the file: ``data/cifar10dvs/train`` reads ``data/cifar10dvs/train.pkl`` (or
``.npz``, or the path itself). Make the files from the raw datasets with
``python -m bidl_models.datasets.convert``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from ..registry import DATASETS
from .base import BaseDataset, load_frames_file, resolve_frames_file


@DATASETS.register()
class FramesDataset(BaseDataset):
    """Any preprocessed frame file; class names from the file's ``.json`` sidecar / npz or ``classes``."""

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False):
        if data_prefix is None:
            raise ValueError(f"{type(self).__name__}: data_prefix is required (the preprocessed frame file)")
        self.file = resolve_frames_file(data_prefix, f"{type(self).__name__} data_prefix")
        self.meta: dict = {}
        super().__init__(data_prefix, pipeline, classes, test_mode)

    @property
    def source(self) -> str:
        return str(self.file)

    def load_annotations(self) -> list[dict]:
        infos, classes, self.meta = load_frames_file(self.file)
        if classes and type(self).CLASSES is None and self.CLASSES is None:
            self.CLASSES = list(classes)
        return infos


@DATASETS.register()
class DvsMnist(FramesDataset):
    """MNIST-DVS (AEDAT 2.0 recordings of moving MNIST digits), 10 classes."""

    CLASSES = [str(d) for d in range(10)]


@DATASETS.register()
class NMnist(FramesDataset):
    """N-MNIST (saccading ATIS recordings of MNIST, 34x34), 10 classes."""

    CLASSES = [str(d) for d in range(10)]


@DATASETS.register()
class Cifar10Dvs(FramesDataset):
    """CIFAR10-DVS (AEDAT 2.0, 128x128), 10 classes."""

    CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@DATASETS.register()
class DvsGesture(FramesDataset):
    """DVS128 Gesture (AEDAT 3.1, 128x128), 11 classes (csv labels 1..11 -> 0..10)."""

    CLASSES = ["hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
               "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
               "arm_roll", "air_drums", "air_guitar", "other_gestures"]
