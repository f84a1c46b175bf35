"""Checkpoint reading and strict weight loading, shared by compile, test and the runtime.

Accepts a plain state_dict or the guide's checkpoint dict (weights under ``state_dict`` or
``model``), with ``module.`` (DDP) and ``backbone.`` (ImageClassifier) prefixes stripped.
Loaded with ``torch.load(weights_only=True)``: a checkpoint can't run code.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The backbone weights of a checkpoint file, prefixes stripped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {type(e).__name__}: {e}") from None
    return strip_prefixes(extract_state_dict(obj, str(path)))


def extract_state_dict(obj: object, where: str) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {where!r}: expected a state_dict (name -> tensor) or a dict "
                         "with a 'state_dict' key")
    return dict(obj)


def strip_prefixes(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop ``module.`` then ``backbone.`` prefixes; keys outside the backbone (e.g. ``head.``
    of an ImageClassifier without parameters) are kept as they are."""
    out = {}
    for k, v in sd.items():
        for pre in ("module.", "backbone."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def load_weights(module: nn.Module, sd: Mapping[str, Tensor], where: str = "checkpoint") -> None:
    """Strict load; ValueError listing missing / unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(own.keys() - sd.keys())
    unexpected = sorted(sd.keys() - own.keys())
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
              for k in own.keys() & sd.keys() if tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(xs: list[str]) -> str:
            return ", ".join(xs[:10]) + (f", ... ({len(xs)} in all)" if len(xs) > 10 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {show(shapes)}")
        raise ValueError(f"{where} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)
