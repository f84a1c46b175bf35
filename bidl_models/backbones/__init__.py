"""Backbones, registered by BIDL's class names in :data:`bidl_models.registry.BACKBONES`, one module
per family: ``sequential`` (the ``Seq*`` VGG-like nets, itout, It and LIF+), ``resnet`` and
``resnet_variants`` (lite and It ResNets), ``attention_vgg`` (AttentionVGGNet), ``fasttext`` (text).

``NirGraph`` (a NIR graph file run as a backbone, :class:`bidl_models.nir.NirBackbone`) is
registered here too, so configs can use it without importing :mod:`bidl_models.nir`; building one
needs the ``nir`` extra.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from ..registry import BACKBONES
from .base import KEY_ALIASES, Backbone, NeuronSpec, TemporalAccumulator, check_itout, seeded
from .attention_vgg import AttentionVGGNet
from .fasttext import FastTextItout, FastTextlifplusItout
from .resnet import ResNetLifItout
from .resnet_variants import ResNetLif, ResNetLifReluItout
from .sequential import (
    SeqBackbone, SeqClif3Fc3DmIt, SeqClif3Fc3DmItout, SeqClif3Fc3LcItout, SeqClif3Flif2DgItout, SeqClif5Fc2CdIt,
    SeqClif5Fc2CdItout, SeqClif5Fc2DmIt, SeqClif5Fc2DmItout, SeqClif7Fc1CdIt, SeqClif7Fc1CdItout, SeqClif7Fc1DgIt,
    SeqClifplus3Fc3DmItout, SeqClifplus3Fc3LcItout, SeqClifplus3Flifplus2DgItout, SeqClifplus5Fc2CdItout, mlp,
    mlp_blocks, variant,
)

__all__ = ["Backbone", "SeqBackbone", "NeuronSpec", "TemporalAccumulator", "build_backbone", "backbone_kwargs",
           "ResNetLifItout", "ResNetLifReluItout", "ResNetLif", "SeqClif3Fc3DmItout", "SeqClif3Flif2DgItout",
           "SeqClif5Fc2CdItout", "SeqClif7Fc1CdItout", "SeqClif3Fc3LcItout", "SeqClif5Fc2DmItout",
           "SeqClifplus3Fc3DmItout", "SeqClifplus3Fc3LcItout", "SeqClifplus5Fc2CdItout", "SeqClifplus3Flifplus2DgItout",
           "SeqClif5Fc2CdIt", "SeqClif5Fc2DmIt", "SeqClif3Fc3DmIt", "SeqClif7Fc1CdIt", "SeqClif7Fc1DgIt",
           "AttentionVGGNet", "FastTextItout", "FastTextlifplusItout", "BACKBONES", "KEY_ALIASES", "check_itout",
           "mlp", "mlp_blocks", "variant", "config_file_digests"]

# NirGraph: bidl_models.nir imports only torch and numpy at module level (the ``nir`` package when a
# graph is built), so this is safe without the extra; ``from ..`` also works when bidl_models.nir is
# the module being imported first (it is then returned half-initialised and registers itself).
from .. import nir as _nir  # noqa: E402,F401
from ..checkpoint import file_sha256
from ..segments import validate_splits


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
    (s, e), = validate_splits([split], net.n_blocks, full=False, names=[f"{where}.split"], backbone=net)
    return net.segment(s, e)


def config_file_digests(cfg: Mapping) -> dict[str, str]:
    """``{'model.backbone.graph': sha256, ...}``: the content hashes of the files the config's
    backbones are built from (the keys a backbone class lists in ``config_files``, e.g. NirGraph's
    ``graph``), for cache keys that must change when a file's content does while its path does not.
    A missing file hashes as ``'missing'``; values that are not paths (an in-memory graph) are skipped."""
    out: dict[str, str] = {}
    for key in sorted(k for k in cfg if k == "model" or (k.startswith("model_") and k[6:].isdigit())):
        model = cfg[key]
        bb = model.get("backbone") if isinstance(model, Mapping) else None
        if not isinstance(bb, Mapping) or bb.get("type") not in BACKBONES:
            continue
        for name in getattr(BACKBONES.get(bb["type"]), "config_files", ()):
            value: Any = bb.get(name)
            if isinstance(value, (str, Path)):
                out[f"{key}.backbone.{name}"] = file_sha256(value) if Path(value).is_file() else "missing"
    return out
