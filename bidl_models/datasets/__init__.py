"""Datasets, event readers, events-to-frames and data pipelines, registered by name.

One module per dataset (each registers itself in :data:`bidl_models.registry.DATASETS` when imported
here): ``cifar10dvs``, ``dvsgesture``, ``dvsmnist``, ``nmnist`` (event frames; shared reader in
``frames``, also ``FramesDataset`` and ``SpikingJellyFrames``), ``glyphs`` (generated), ``mnist``
(idx files, for the spike encoders), ``luna16``, ``rgbgesture``, ``jester``, ``esimagenet``, ``imdb``,
``tonic_adapter`` (``TonicDataset``), ``synthetic`` (``SyntheticData``, ``synthetic_samples``: seeded input of a
model's shape when its data is missing). Shared pieces: ``base`` (``BaseDataset``, ``build_dataset``),
``files`` (safe file reading, frame files), ``splits``, ``events`` / ``readers`` (raw events),
``pipelines`` (steps in :data:`bidl_models.registry.PIPELINES`). ``python -m
bidl_models.datasets.convert`` turns raw DVS recordings into frame files.
"""
from ..registry import DATASETS, PIPELINES
from .base import BaseDataset, build_dataset, topk_accuracy
from .cifar10dvs import Cifar10Dvs
from .dvsgesture import DvsGesture
from .dvsmnist import DvsMnist
from .esimagenet import ESImagenet
from .events import EVENT_DTYPE, events_to_frames, frame_index, make_events
from .files import load_frames_file, load_object_npy, resolve_frames_file, save_frames_file
from .frames import FramesDataset, SpikingJellyFrames
from .glyphs import DvsGlyphs
from .imdb import Imdb
from .jester import Jester20bn
from .luna16 import Luna16Cls, Luna16Cls32
from .mnist import MNIST, read_idx, write_idx
from .nmnist import NMnist
from .pipelines import (Collect, Compose, RandomCropVideo, RandomFlipVideo, ResizeDVS, ToTensor,
                        ToTensorType)
from .readers import (read_aedat2, read_aedat3, read_events, read_nmnist_bin, write_aedat2, write_aedat3,
                      write_nmnist_bin)
from .rgbgesture import RgbGesture
from .synthetic import SyntheticData, synthetic_samples
from .tonic_adapter import TonicDataset, from_tonic, tonic_to_frames

__all__ = [
    "DATASETS", "PIPELINES", "BaseDataset", "build_dataset", "topk_accuracy", "load_frames_file",
    "load_object_npy", "resolve_frames_file", "save_frames_file", "FramesDataset", "SpikingJellyFrames",
    "DvsMnist", "NMnist", "Cifar10Dvs", "DvsGesture", "DvsGlyphs", "MNIST", "read_idx", "write_idx",
    "Luna16Cls", "Luna16Cls32", "RgbGesture", "Jester20bn", "ESImagenet", "Imdb", "TonicDataset",
    "from_tonic", "tonic_to_frames", "EVENT_DTYPE", "events_to_frames", "frame_index", "make_events",
    "Compose", "RandomCropVideo", "RandomFlipVideo", "ResizeDVS", "ToTensorType", "ToTensor", "Collect",
    "read_aedat2", "read_aedat3", "read_events", "read_nmnist_bin", "write_aedat2", "write_aedat3",
    "write_nmnist_bin", "SyntheticData", "synthetic_samples",
]
