"""DVS128 Gesture (AEDAT 3.1, 128x128), 11 classes.

Sources (see :mod:`.frames`): a file from ``python -m bidl_models.datasets.convert --dataset
dvsgesture`` (labels = csv class - 1, in the order of ``CLASSES``), BIDL's cache
``<data_root>/DvsGesture/frames_number_<T>_split_by_number/<split>/<split>_datas.npy`` or SpikingJelly's
``frames_number_<T>_split_by_<...>/<split>/<0..10>/*.npz``. The last two number classes by the sorted
folder names ``0, 1, 10, 2, ..., 9`` (label 2 = other gestures), as the networks trained there expect;
``CLASSES`` of such a dataset is reordered to match.
"""
from __future__ import annotations

from ..registry import DATASETS
from .frames import FramesDataset


@DATASETS.register("DvsGesture", "DVS128Gesture")
class DvsGesture(FramesDataset):
    """DVS128 Gesture, 11 classes (csv labels 1..11 -> 0..10; BIDL/SpikingJelly folders ``0``..``10``)."""

    CLASSES = ["hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
               "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
               "arm_roll", "air_drums", "air_guitar", "other_gestures"]
    FOLDER_NAMES = [str(i) for i in range(11)]
    BIDL_DIR = "DvsGesture"
