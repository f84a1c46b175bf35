"""BIDL-style spiking neural networks: neurons, layers, backbones, segments, configs.

The names below are loaded on first use (PEP 562), so that importing a light module of this package
(``bidl_models.specs``, ``bidl_models.slicing``: what a plan is made of) does not import torch.
"""
from importlib import import_module
from typing import Any

from bidl_grid.versions import check_torch as _check_torch

_check_torch()   # one-line ImportError on a torch older than bidl-grid supports (read from metadata, not imported)

_EXPORTS = {
    "BACKBONES": "backbones", "Backbone": "backbones", "build_backbone": "backbones",
    "load_config": "config", "load_model": "from_config",
    "Segment": "segments", "auto_split": "segments", "check_chain": "segments", "split_backbone": "segments",
    "Signature": "specs", "State": "specs", "TensorSpec": "specs", "zero_state": "specs",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
