"""Pipeline steps, registered by BIDL's names in :data:`bidl_models.registry.PIPELINES`.

* ``compose``: :class:`Compose` and the shared helpers (keys, sizes, resizing, seeded RNG);
* ``formatting``: ``ToTensor``, ``ToTensorType``, ``ToTensorTypeDict``, ``ImageToTensor``, ``Transpose``,
  ``Collect``, ``ToOneHot``;
* ``video``: ``RandomCropVideo(Dict)``, ``RandomFlipVideo(Dict)``, ``ResizeDVS``, ``ResizeVideo``,
  ``CenterCropVideo``, ``CropPadByRatioVideo``, ``CutOutVideo``, ``RandomResizedCropVideo``,
  ``ColorJitterVideo``;
* ``image``: ``Resize``;
* ``loading``: ``LoadFramesInFolder``, ``LoadNumpy``;
* ``encoders``: ``Rate``, ``Latency`` (registered under BIDL's name ``Temporal`` too), ``Population``.
"""
from .compose import Compose, resize_frames
from .encoders import Latency, Population, Rate
from .formatting import (Collect, ImageToTensor, ToOneHot, ToTensor, ToTensorType, ToTensorTypeDict,
                         Transpose)
from .image import Resize
from .loading import LoadFramesInFolder, LoadNumpy
from .video import (CenterCropVideo, ColorJitterVideo, CropPadByRatioVideo, CutOutVideo, RandomCropVideo,
                    RandomFlipVideo, RandomResizedCropVideo, ResizeDVS, ResizeVideo)

__all__ = ["Compose", "resize_frames", "Population", "Rate", "Latency", "Collect", "ImageToTensor", "ToOneHot",
           "ToTensor", "ToTensorType", "ToTensorTypeDict", "Transpose", "Resize", "LoadFramesInFolder",
           "LoadNumpy", "CenterCropVideo", "ColorJitterVideo", "CropPadByRatioVideo", "CutOutVideo",
           "RandomCropVideo", "RandomFlipVideo", "RandomResizedCropVideo", "ResizeDVS", "ResizeVideo"]
