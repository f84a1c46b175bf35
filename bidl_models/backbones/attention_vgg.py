"""``AttentionVGGNet``: BIDL's CIFAR10-DVS VGG with attention over time (TA-SNN and TCJA).

``pool1`` AvgPool(34, 2) (128 -> 48), then eight conv blocks ``conv1..8`` (``conv`` 3x3 p1 with
bias -> ``bn`` BatchNorm on the current -> ``lif`` Lif2d), AvgPool(2) after conv2, conv4, conv6 and
conv8, :class:`~bidl_models.attention.TemporalWiseAttention` ``twa1`` after conv4,
:class:`~bidl_models.attention.TCJA` ``tcja`` and ``twa2`` after conv8, and ``fc`` (Flatten, Linear)
per step; the logits are the temporal mean. Channels 64, 128 | 256, 256 | 512, 512 | 512, 512.

The attention layers weigh every step by all T steps, so the blocks that hold them (conv4's and
conv8's) run on whole sequences only: the model cuts into segments (a 1xC grid) but not into
time slices. BIDL hard-codes 2 input channels, T=10 for the attention and 10 classes; here they
follow ``input_channels``, ``timestep`` and ``nclass`` (the same model for BIDL's config).
BIDL's class is not exported by its package, so its config cannot be built there; it is here.
"""
from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from ..attention import TCJA, TemporalWiseAttention
from ..layers import Temporal, per_step
from ..registry import BACKBONES
from ..specs import State, prefixed, sub_state
from .base import Backbone, NeuronSpec

CHANNELS = (64, 128, 256, 256, 512, 512, 512, 512)


class ConvBnLif(Temporal):
    """BIDL's ``Conv3x3Block``: ``conv`` (3x3, padding 1, bias) -> ``bn`` -> ``lif`` (Lif2d)."""

    def __init__(self, ci: int, co: int, n: NeuronSpec):
        super().__init__()
        self.conv = nn.Conv2d(ci, co, 3, padding=1)
        self.bn = nn.BatchNorm2d(co)
        self.lif = n.soma(co, norm_state=False)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        y, s = self.lif.run(per_step(self.bn, per_step(self.conv, x)), sub_state(state, "lif"))
        return y, prefixed(s, "lif")


@BACKBONES.register()
class AttentionVGGNet(Backbone):
    """VGG-8 with temporal-wise and temporal-channel attention (module docstring). An It model: its
    BatchNorms take training statistics over all frames (``bn_stats='frames'``), as BIDL's."""

    default_bn_stats = "frames"
    short_mean = "given"

    def __init__(self, timestep: int = 10, input_channels: int = 2, h: int = 128, w: int = 128, nclass: int = 10,
                 cmode: str = "spike", noise: float = 0, soma_params: Any = "all_share", surrogate_width: float = 1.0,
                 bn_stats: Optional[str] = None):
        super().__init__()
        n = NeuronSpec(cmode, soma_params, noise, surrogate_width=float(surrogate_width))
        self.pool1 = nn.AvgPool2d(kernel_size=34, stride=2)
        blocks: list[list[str]] = []
        ci = input_channels
        for i, co in enumerate(CHANNELS, 1):
            self.add_module(f"conv{i}", ConvBnLif(ci, co, n))
            blocks.append([f"conv{i}"])
            if i == 4:
                self.twa1 = TemporalWiseAttention(T=timestep)
                blocks[-1].append("twa1")
            if i == 8:
                self.tcja = TCJA(3, 3, timestep, co)
                self.twa2 = TemporalWiseAttention(T=timestep)
                blocks[-1] += ["tcja", "twa2"]
            if i % 2 == 0:
                self.add_module(f"pool{i // 2 + 1}", nn.AvgPool2d(2, 2))
                blocks[-1].append(f"pool{i // 2 + 1}")
            ci = co
        feat = self.features(["pool1"] + [p for b in blocks for p in b], (input_channels, h, w))
        self.fc = nn.Sequential(nn.Flatten(1), nn.Linear(feat, nclass))
        self._finish(blocks + [["fc"]], timestep, "mean", (input_channels, h, w), stem=["pool1"], bn_stats=bn_stats)
