"""Backbones, registered by BIDL's class names in :data:`bidl_models.registry.BACKBONES`."""
from __future__ import annotations

from typing import Mapping, Optional

from ..registry import BACKBONES
from .base import KEY_ALIASES, Backbone, NeuronSpec, TemporalAccumulator, check_itout, seeded
from .resnet import ResNetLifItout
from .sequential import (
    SeqBackbone, SeqClif3Fc3DmItout, SeqClif3Flif2DgItout, SeqClif5Fc2CdItout, SeqClif7Fc1CdItout, mlp, mlp_blocks,
)

__all__ = ["Backbone", "SeqBackbone", "NeuronSpec", "TemporalAccumulator", "build_backbone", "backbone_kwargs",
           "ResNetLifItout", "SeqClif3Fc3DmItout", "SeqClif3Flif2DgItout", "SeqClif5Fc2CdItout",
           "SeqClif7Fc1CdItout", "BACKBONES", "KEY_ALIASES", "check_itout", "mlp", "mlp_blocks"]


def backbone_kwargs(cfg: Mapping, where: str = "model.backbone") -> dict:
    """``cfg`` with the user guide's key spellings (``c0, h0, w0``) mapped to the public repository's
    (``input_channels, h, w``); ValueError when both spellings of one key disagree."""
    out = dict(cfg)
    for old, new in KEY_ALIASES.items():
        if old in out:
            val = out.pop(old)
            if new in out and out[new] != val:
                raise ValueError(f"{where}: {old}={val!r} and {new}={out[new]!r} name the same setting "
                                 f"with different values; expected one of them")
            out[new] = val
    return out


def build_backbone(cfg: Mapping, seed: Optional[int] = 0, where: str = "model.backbone"):
    """Build a backbone from ``dict(type=..., **kwargs)`` with seeded (deterministic) weights.

    Both config dialects are accepted (``c0/h0/w0`` or ``input_channels/h/w``). A ``split=[s, e]``
    key returns that :class:`~bidl_models.segments.Segment` of the backbone.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a dict with a 'type' key, got {cfg!r}")
    cfg = backbone_kwargs(cfg, where)
    split = cfg.pop("split", None)
    with seeded(seed):
        net = BACKBONES.build(cfg, where)
    if split is None:
        return net
    from ..segments import validate_splits
    (s, e), = validate_splits([split], net.n_blocks, full=False, names=[f"{where}.split"])
    return net.segment(s, e)
