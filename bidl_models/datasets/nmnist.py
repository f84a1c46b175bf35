"""N-MNIST (saccading ATIS recordings of MNIST, 34x34), 10 classes.

Sources (see :mod:`.frames`): a file from ``python -m bidl_models.datasets.convert --dataset nmnist``
or SpikingJelly's ``frames_number_<T>_split_by_<...>/<split>/<0..9>/*.npz``. For tonic's NMNIST, use
``TonicDataset``.
"""
from __future__ import annotations

from ..registry import DATASETS
from .frames import FramesDataset


@DATASETS.register()
class NMnist(FramesDataset):
    """N-MNIST, 10 classes (the digits)."""

    CLASSES = [str(d) for d in range(10)]
    FOLDER_NAMES = CLASSES
