"""MNIST-DVS (AEDAT 2.0 recordings of moving MNIST digits, 128x128), 10 classes.

Sources (see :mod:`.frames`): a file from ``python -m bidl_models.datasets.convert --dataset
dvsmnist`` or BIDL's cache ``<data_root>/DvsMnist/frames_number_<T>_split_by_number/{train,test}_datas.npy``
(class folders ``grabbed_data0`` .. ``grabbed_data9``).
"""
from __future__ import annotations

from ..registry import DATASETS
from .frames import FramesDataset


@DATASETS.register()
class DvsMnist(FramesDataset):
    """MNIST-DVS, 10 classes (the digits)."""

    CLASSES = [str(d) for d in range(10)]
    FOLDER_NAMES = [f"grabbed_data{d}" for d in range(10)]
    BIDL_DIR = "DvsMnist"
