"""Backbones, registered by name in :data:`bidl_models.registry.BACKBONES`."""
from __future__ import annotations

from typing import Mapping, Optional

from ..registry import BACKBONES
from .base import Backbone, TemporalAccumulator, seeded
from .resnet import ResNetLifItout
from .sequential import SeqClif3Fc3DmItout, SeqClif3Flif2DgItout, SeqClif5Fc2CdItout, SeqClif7Fc1CdItout

__all__ = ["Backbone", "TemporalAccumulator", "build_backbone", "ResNetLifItout", "SeqClif3Fc3DmItout",
           "SeqClif3Flif2DgItout", "SeqClif5Fc2CdItout", "SeqClif7Fc1CdItout", "BACKBONES"]


def build_backbone(cfg: Mapping, seed: Optional[int] = 0, where: str = "model.backbone"):
    """Build a backbone from ``dict(type=..., **kwargs)`` with seeded (deterministic) weights.

    A ``split=[s, e]`` key returns that :class:`~bidl_models.segments.Segment` of the backbone.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a dict with a 'type' key, got {cfg!r}")
    cfg = dict(cfg)
    split = cfg.pop("split", None)
    with seeded(seed):
        net = BACKBONES.build(cfg, where)
    if split is None:
        return net
    from ..segments import validate_splits
    (s, e), = validate_splits([split], net.n_blocks, full=False, names=[f"{where}.split"])
    return net.segment(s, e)
