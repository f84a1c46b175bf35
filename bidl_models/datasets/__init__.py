"""DVS datasets, event readers, events-to-frames and data pipelines (registered by name).

``build_dataset(cfg)`` builds ``cfg['type']`` from :data:`bidl_models.registry.DATASETS`; pipeline
steps are in :data:`bidl_models.registry.PIPELINES`.
"""
from ..registry import DATASETS, PIPELINES
from .base import (BaseDataset, build_dataset, load_frames_file, resolve_frames_file, save_frames_file,
                   topk_accuracy)
from .dvs import Cifar10Dvs, DvsGesture, DvsMnist, FramesDataset, NMnist
from .events import EVENT_DTYPE, events_to_frames, frame_index, make_events
from .glyphs import DvsGlyphs
from .pipelines import (Collect, Compose, RandomCropVideo, RandomFlipVideo, ResizeDVS, ToTensor,
                        ToTensorType)
from .readers import (read_aedat2, read_aedat3, read_events, read_nmnist_bin, write_aedat2, write_aedat3,
                      write_nmnist_bin)

__all__ = [
    "DATASETS", "PIPELINES", "BaseDataset", "build_dataset", "load_frames_file", "resolve_frames_file",
    "save_frames_file", "topk_accuracy", "FramesDataset", "DvsMnist", "NMnist", "Cifar10Dvs", "DvsGesture",
    "DvsGlyphs", "EVENT_DTYPE", "events_to_frames", "frame_index", "make_events", "Compose",
    "RandomCropVideo", "RandomFlipVideo", "ResizeDVS", "ToTensorType", "ToTensor", "Collect",
    "read_aedat2", "read_aedat3", "read_events", "read_nmnist_bin", "write_aedat2", "write_aedat3",
    "write_nmnist_bin",
]
