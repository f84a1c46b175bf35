"""BIDL-style spiking neural networks: neurons, layers, backbones, segments, configs."""
from bidl_grid.versions import check_torch as _check_torch

_check_torch()   # one-line ImportError on a torch older than bidl-grid supports, before any torch API is used
from .backbones import BACKBONES, Backbone, build_backbone
from .config import load_config, load_model
from .segments import Segment, SegmentSpecs, auto_split, check_chain, split_backbone
from .specs import State, TensorSpec, zero_state

__all__ = ["BACKBONES", "Backbone", "build_backbone", "load_config", "load_model", "Segment", "SegmentSpecs",
           "auto_split", "check_chain", "split_backbone", "State", "TensorSpec", "zero_state"]
