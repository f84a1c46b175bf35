"""ResNetLifItout: spiking ResNet 10/18/34/50/101/152 whose flat block list ``split`` indexes.

Stem: Conv 7x7 s2 (3x3 s1 if ``low_resolut``) -> BN -> LIF -> MaxPool(3, 2, 1) (no pool if
``low_resolut``). Four stages of BasicBlock (10/18/34) or Bottleneck (50/101/152, mid = out / 4,
stride on the 3x3 conv). A block is conv-BN-LIF ..., conv-BN, residual add, then LIF; the
downsample path is AvgPool(stride) + 1x1 conv + BN. Head: global average pool -> Linear, per step;
the temporal accumulator then averages (mean of per-step logits = logits of the mean, as Linear is
affine). For depth 50 on 2x128x128 the membrane state is 12.55 MB per sample (fp32).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor, nn

from ..layers import Conv2dLif, Temporal, TemporalSequential, per_step, soma_for
from ..registry import BACKBONES
from ..specs import State, prefixed, sub_state
from .base import Backbone
from .sequential import soma_kwargs


def _downsample(ci: int, co: int, stride: int) -> Optional[nn.Sequential]:
    if stride == 1 and ci == co:
        return None
    mods: list[nn.Module] = [nn.AvgPool2d(stride, stride)] if stride > 1 else []
    mods += [nn.Conv2d(ci, co, 1, bias=False), nn.BatchNorm2d(co)]
    return nn.Sequential(*mods)


class _Residual(Temporal):
    """Shared run of both block kinds: ``lif(main(x) + downsample(x))``."""

    main: TemporalSequential
    down: Optional[nn.Sequential]
    lif: Temporal

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        h, s_main = self.main.run(x, sub_state(state, "main"))
        idn = per_step(self.down, x) if self.down is not None else x
        y, s_lif = self.lif.run(h + idn, sub_state(state, "lif"))
        return y, {**prefixed(s_main, "main"), **prefixed(s_lif, "lif")}


class BasicBlock(_Residual):
    expansion = 1

    def __init__(self, ci: int, width: int, stride: int, kw: dict):
        super().__init__()
        co = width
        self.main = TemporalSequential([
            ("cl1", Conv2dLif(ci, width, 3, stride, 1, **kw)),
            ("conv2", nn.Sequential(nn.Conv2d(width, co, 3, 1, 1, bias=False), nn.BatchNorm2d(co))),
        ])
        self.down = _downsample(ci, co, stride)
        self.lif = soma_for(kw["neuron"], 2)(co, **_soma_only(kw))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.main.conv2.body[1]


class Bottleneck(_Residual):
    expansion = 4

    def __init__(self, ci: int, width: int, stride: int, kw: dict):
        super().__init__()
        co = width * self.expansion
        self.main = TemporalSequential([
            ("cl1", Conv2dLif(ci, width, 1, 1, 0, **kw)),
            ("cl2", Conv2dLif(width, width, 3, stride, 1, **kw)),
            ("conv3", nn.Sequential(nn.Conv2d(width, co, 1, bias=False), nn.BatchNorm2d(co))),
        ])
        self.down = _downsample(ci, co, stride)
        self.lif = soma_for(kw["neuron"], 2)(co, **_soma_only(kw))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.main.conv3.body[1]


def _soma_only(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k != "neuron"}


@BACKBONES.register("ResNetLifItout", "ResNetLifItout_MP")
class ResNetLifItout(Backbone):
    """Spiking ResNet; ``depth`` in 10/18/34/50/101/152 (stage sizes in ``arch_settings``)."""

    arch_settings = {
        10: (BasicBlock, (1, 1, 1, 1)),
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, nclass: int, low_resolut: bool = False, timestep: int = 8,
                 input_channels: int = 3, stem_channels: int = 64, base_channels: int = 64,
                 down_t: Sequence = (1, "max"), zero_init_residual: bool = False, noise: float = 1e-3,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 norm: Optional[str] = None, neuron: str = "lif", neuron_config: Optional[Sequence] = None,
                 input_size: Optional[Sequence[int]] = None):
        super().__init__()
        if depth not in self.arch_settings:
            raise ValueError(f"depth={depth!r}: expected one of {sorted(self.arch_settings)}")
        if not isinstance(down_t, (list, tuple)) or len(down_t) != 2 or down_t[0] != 1:
            raise ValueError(f"down_t={down_t!r}: expected [1, 'max'|'avg'] (temporal downsampling "
                             "is not supported: every time step is processed)")
        if norm not in (None, "bn"):
            raise ValueError(f"norm={norm!r}: expected None or 'bn' (BatchNorm on every LIF state)")
        kw = soma_kwargs(cmode, soma_params, noise, neuron, neuron_config)
        kw["norm_state"] = norm == "bn"
        block, stages = self.arch_settings[depth]
        k, s, p = (3, 1, 1) if low_resolut else (7, 2, 3)
        stem: list[tuple[str, nn.Module]] = [("cl", Conv2dLif(input_channels, stem_channels, k, s, p, **kw))]
        if not low_resolut:
            stem.append(("mp", nn.MaxPool2d(3, 2, 1)))
        self.stem = TemporalSequential(stem)
        blocks: list[_Residual] = []
        ci = stem_channels
        for i, n in enumerate(stages):
            width = base_channels * 2 ** i
            for j in range(n):
                b = block(ci, width, 2 if (i > 0 and j == 0) else 1, kw)
                blocks.append(b)
                ci = width * block.expansion
        self.blocks = nn.ModuleList(blocks)
        if zero_init_residual:
            for b in blocks:
                nn.init.zeros_(b.last_bn().weight)
        self.head = TemporalSequential([
            ("gap", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))),
            ("fc", nn.Linear(ci, nclass)),
        ])
        self.depth = depth
        shape = (input_channels, *input_size) if input_size else None
        self._finish(timestep, amode, shape)
