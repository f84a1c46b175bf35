"""Models built from a loaded config: its segments (``model_0..n``, or the one model) with their
weights, or its whole backbone. The config module reads files; this one builds what they describe.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

from .backbones import build_backbone
from .checkpoint import load_weights, read_state_dict
from .config import backbone_config, load_config, model_segment_configs
from .segments import check_chain, validate_splits


def build_segments(cfg: Mapping, seed: Optional[int] = 0, model_in_shape: Optional[Sequence[int]] = None,
                   checkpoint: Optional[str | Path] = None):
    """The config's model segments, validated: ``model_0..n`` with ``split`` (contiguous, covering
    the model, chaining, matching ``models_compile_inputshape`` if given), or ``model`` whole.

    With ``checkpoint``, every segment's backbone loads its weights (strictly) before it is cut.
    """
    sd = read_state_dict(checkpoint) if checkpoint is not None else None
    entries = model_segment_configs(cfg)
    nets, splits, names = [], [], []
    for key, bb in entries:
        split = bb.pop("split", None)
        net = build_backbone(bb, seed=seed, where=f"{key}.backbone")
        if sd is not None:
            load_weights(net, sd, f"checkpoint {str(checkpoint)!r}")
        nets.append(net)
        splits.append(list(split) if split is not None else [0, net.n_blocks])
        names.append(f"{key}.backbone.split")
        if split is None and len(entries) > 1:
            raise ValueError(f"{key}.backbone has no 'split' but the config has {len(entries)} segment models")
    n = nets[0].n_blocks
    for key, net in zip(names, nets):
        if net.n_blocks != n:
            raise ValueError(f"{key}: its backbone has {net.n_blocks} blocks, model_0's has {n}")
    ranges = validate_splits(splits, n, full=True, names=names, backbone=nets[0])
    segs = [net.segment(s, e) for net, (s, e) in zip(nets, ranges)]
    inshapes = cfg.get("models_compile_inputshape")
    if inshapes is not None and len(segs) == 1 and len(inshapes) != 1:
        inshapes = None  # a single whole model: the key describes its split variant
    check_chain(segs, model_in_shape, inshapes, [k for k, _ in entries])
    return segs


def load_model(config: str | Path | Mapping, checkpoint: Optional[str | Path] = None, *, seed: Optional[int] = 0,
               overrides: Sequence[str] = (), config_root: str | Path | Sequence[str | Path] | None = None):
    """The config's whole backbone in eval mode, with ``checkpoint``'s weights (BIDL's or the
    project's file, loaded strictly) or seeded initial weights.

    ``config``: a name, a path or a loaded config. ``model(x[B, T, ...])`` returns the logits
    ``[B, nclass]`` (temporal mean of the per-step outputs for ``amode='mean'``, as BIDL's
    backbones); ``model.run(x[T, B, ...], state)`` runs chunks with explicit state.
    """
    cfg = config if isinstance(config, Mapping) else load_config(config, overrides, config_root)
    net = build_backbone(backbone_config(cfg), seed=seed)
    if checkpoint is not None:
        load_weights(net, read_state_dict(checkpoint), f"checkpoint {str(checkpoint)!r}")
    return net.eval()
