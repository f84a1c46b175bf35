"""CIFAR10-DVS (AEDAT 2.0 recordings of CIFAR-10 images, 128x128), 10 classes.

Sources (see :mod:`.frames`): a file from ``python -m bidl_models.datasets.convert --dataset
cifar10dvs``, BIDL's cache ``<data_root>/DVSCIFAR10/frames_number_<T>_split_by_number/{train,test}_datas.npy``
or SpikingJelly's ``frames_number_<T>_split_by_<...>/<class name>/*.npz``.
"""
from __future__ import annotations

from ..registry import DATASETS
from .frames import FramesDataset


@DATASETS.register("Cifar10Dvs", "CIFAR10DVS")
class Cifar10Dvs(FramesDataset):
    """CIFAR10-DVS, 10 classes; class folders are the class names (BIDL and SpikingJelly)."""

    CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    FOLDER_NAMES = CLASSES
    BIDL_DIR = "DVSCIFAR10"
