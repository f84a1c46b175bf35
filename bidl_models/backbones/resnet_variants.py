"""The other ResNets of BIDL's zoo, on :class:`~bidl_models.backbones.resnet.ResNetLifItout`:

* ``ResNetLifReluItout`` ("lite"): the same stem, stages, downsampling and head, but only the first
  block of every stage keeps a neuron (``lif1``, after ``conv1``); every other activation is a ReLU,
  so the network is mostly an ANN run per step::

      first block  BasicBlock: relu(conv2(lif1(conv1 x)) + down x)
                   Bottleneck: relu2(conv3(relu1(conv2(lif1(conv1 x)))) + down x)
      other blocks BasicBlock: relu(conv2(relu(conv1 x)) + x)
                   Bottleneck: relu3(conv3(relu2(conv2(relu1(conv1 x)))) + x)

* ``ResNetLif`` (BIDL's It mode of ResNetLifItout): the same network with every conv+BN and
  downsample wrapped in ``TimeDistributed`` (keys ``conv.module.0.weight``, ...); BIDL averages the
  pooled features over T, H and W before ``fc``, which equals the itout model's mean of per-step
  ``fc`` outputs (``fc`` is linear): here both run the same code, so the same weights give the same
  logits. ``it_batch`` is accepted and not needed.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from ..layers import PerStep
from ..registry import BACKBONES
from ..temporal_layers import TimeDistributed
from .base import NeuronSpec
from .resnet import Bottleneck, ResNetLifItout, _Residual, conv_bn, downsample


def _relu() -> PerStep:
    return PerStep(nn.ReLU())


class LiteBasicBlock(_Residual):
    """``conv1 -> lif1 (first block of a stage) | relu -> conv2``, plus the shortcut, then ``relu``."""

    expansion = 1
    last_lif = "relu"

    def __init__(self, ci: int, width: int, stride: int, n: NeuronSpec, norm_state: bool, first: bool):
        super().__init__()
        self.main_order = ("conv1", "lif1" if first else "relu", "conv2")
        self.conv1 = conv_bn(ci, width, 3, stride, 1, n.bias)
        if first:
            self.lif1 = n.soma(width, norm_state)
        self.conv2 = conv_bn(width, width, 3, 1, 1, n.bias)
        self.downsample = downsample(ci, width, stride, n.bias) if stride != 1 or ci != width else None
        self.relu = _relu()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2[1]


class LiteBottleneck(_Residual):
    """First block of a stage: ``conv1 -> lif1 -> conv2 -> relu1 -> conv3``, plus the shortcut,
    ``relu2``; the others: ``conv1 -> relu1 -> conv2 -> relu2 -> conv3``, plus the shortcut, ``relu3``."""

    expansion = 4

    def __init__(self, ci: int, width: int, stride: int, n: NeuronSpec, norm_state: bool, first: bool):
        super().__init__()
        co = width * self.expansion
        act1, act2, self.last_lif = ("lif1", "relu1", "relu2") if first else ("relu1", "relu2", "relu3")
        self.main_order = ("conv1", act1, "conv2", act2, "conv3")
        self.conv1 = conv_bn(ci, width, 1, 1, 0, n.bias)
        setattr(self, act1, n.soma(width, norm_state) if first else _relu())
        self.conv2 = conv_bn(width, width, 3, stride, 1, n.bias)
        setattr(self, act2, _relu())
        self.conv3 = conv_bn(width, co, 1, 1, 0, n.bias)
        self.downsample = downsample(ci, co, stride, n.bias) if stride != 1 or ci != co else None
        setattr(self, self.last_lif, _relu())

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]


@BACKBONES.register()
class ResNetLifReluItout(ResNetLifItout):
    """BIDL's lite spiking ResNet (module docstring); keywords and stem as :class:`ResNetLifItout`."""

    def make_block(self, block: type, index: int, ci: int, width: int, stride: int, n: NeuronSpec,
                   norm_state: bool) -> nn.Module:
        lite = LiteBottleneck if issubclass(block, Bottleneck) else LiteBasicBlock
        return lite(ci, width, stride, n, norm_state, first=index == 0)


@BACKBONES.register()
class ResNetLif(ResNetLifItout):
    """BIDL's It-mode spiking ResNet (module docstring): ResNetLifItout with ``TimeDistributed``
    conv/BN and downsample modules (BIDL's keys), the temporal mean of the logits as the result.
    As BIDL's, its BatchNorms take training statistics over all frames (``bn_stats='frames'``) and
    an input of T != ``timestep`` steps is averaged over the T steps."""

    default_bn_stats = "frames"
    short_mean = "given"

    def __init__(self, depth: int, nclass: int, low_resolut: bool = False, input_channels: int = 3,
                 stem_channels: int = 64, base_channels: int = 64, timestep: int = 10, h: Optional[int] = None,
                 w: Optional[int] = None, down_t: Sequence = (1, "max"), cmode: str = "spike",
                 zero_init_residual: bool = False, soma_params: Any = "all_share", it_batch: int = 1,
                 noise: float = 1e-3, neuron: str = "lif", neuron_config: Optional[Sequence] = None,
                 norm_state: bool = False, conv_bias: bool = True, surrogate_width: float = 1.0,
                 lifplus_form: str = "documented", bn_stats: Optional[str] = None):
        if not isinstance(it_batch, int) or it_batch < 1:
            raise ValueError(f"ResNetLif: it_batch={it_batch!r}: expected a positive int (accepted for BIDL's "
                             "files; any batch runs here)")
        super().__init__(depth, nclass, low_resolut, timestep, h, w, input_channels, stem_channels, base_channels,
                         down_t, zero_init_residual, noise, cmode, "mean", soma_params, None, neuron, neuron_config,
                         norm_state, conv_bias, surrogate_width, lifplus_form, bn_stats)
        self.conv = TimeDistributed(self.conv)
        for i in range(1, 5):
            for blk in getattr(self, f"layer{i}"):
                for name in ("conv1", "conv2", "conv3", "downsample"):
                    mod = getattr(blk, name, None)
                    if mod is not None:
                        setattr(blk, name, TimeDistributed(mod))


__all__ = ["ResNetLifReluItout", "ResNetLif", "LiteBasicBlock", "LiteBottleneck"]
