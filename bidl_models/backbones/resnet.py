"""ResNetLifItout: BIDL's spiking ResNet 10/18/34/50/101/152, module for module with BIDL's names.

Stem: ``input_norm`` ((x - mean) / std per channel, when ``norm=dict(mean, std)``) -> ``conv``
(Conv 7x7 s2 p3 with bias + BN; 3x3 s1 p1 if ``low_resolut``) -> ``lif`` (Lif2d) -> ``maxpool``
(3, 2, 1; none if ``low_resolut``). Stages ``layer1..4`` of BasicBlock (10/18/34) or Bottleneck
(50/101/152, mid = out / 4, stride on the 3x3 conv). A block is ``conv1`` (conv+BN) -> ``lif1`` ...
-> ``convN``, plus ``downsample`` (AvgPool(stride, ceil_mode) + 1x1 conv + BN) on the identity when
the shape changes, then ``lifN`` of the sum. Every conv has a bias (BIDL's; ``conv_bias=False`` for
none). Head: global average pool -> ``fc`` per step; the temporal accumulator averages (mean of
per-step logits = logits of the mean features, as BIDL's GPU path computes, up to rounding).

The flat list of residual blocks is what ``split`` indexes (ResNet-50: 3+4+6+3 = 16). The ceil-mode
average pool keeps the shortcut's size equal to the strided conv's for odd sizes (112x112 input:
layer4 sees 7x7 -> 4x4). For depth 50 on 2x128x128 the membrane state is 12.55 MB per sample (fp32).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cuts import pack, unpack
from ..layers import Temporal, per_step
from ..registry import BACKBONES
from ..specs import State, prefixed, sub_state
from .base import Backbone, NeuronSpec


def conv_bn(ci: int, co: int, k: int, stride: int, padding: int, bias: bool) -> nn.Sequential:
    """``Sequential(Conv2d, BatchNorm2d)`` (keys ``.0.weight``, ``.0.bias``, ``.1.*``)."""
    return nn.Sequential(nn.Conv2d(ci, co, k, stride, padding, bias=bias), nn.BatchNorm2d(co))


def downsample(ci: int, co: int, stride: int, bias: bool) -> nn.Sequential:
    """``Sequential(AvgPool2d(stride, ceil_mode), 1x1 Conv2d, BatchNorm2d)`` (keys ``.1.*``, ``.2.*``)."""
    return nn.Sequential(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                         nn.Conv2d(ci, co, 1, bias=bias), nn.BatchNorm2d(co))


class _Residual(Temporal):
    """``lif_last(main(x) + downsample(x))`` with ``main`` = conv1, lif1, conv2, ... (BIDL's names).

    A cut may go inside (:mod:`bidl_models.cuts`): :meth:`run_span` runs the part between two
    positions ``(k, c)`` -- after k units of ``main`` and c output channels of the next, a
    convolution -- handing on ``(x, skip)`` or ``(x, part, skip)``; :meth:`run` is the whole span.
    The skip is the block input after the downsample's pooling (the same operations in the same
    order as ``downsample(x)``, only the 1x1 conv and BN wait for the add), so a cut carries it small.
    """

    main_order: tuple[str, ...]
    last_lif: str

    def stages(self) -> tuple[str, ...]:
        """The units a cut inside this block may follow (the tail -- downsample, add, last neuron -- follows the last)."""
        return self.main_order

    def stage_channels(self, k: int) -> int:
        """Output channels of unit ``k`` (0-based) if it is a convolution (+ BN) that may be cut between
        output channels, else 0."""
        conv = _conv_of(getattr(self, self.main_order[k]))
        return conv.out_channels if conv is not None else 0

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        return self.run_span(x, state)

    def run_span(self, carry: Any, state: Optional[State] = None, start: tuple[int, int] = (0, 0),
                 end: Optional[tuple[int, int]] = None) -> tuple[Any, State]:
        """Run from position ``start`` to ``end`` (None: through the tail, returning the block's output).
        ``carry``: the block input at (0, 0), else what the part before handed on."""
        k, c = start
        pool, project = self._downsample_parts()
        if (k, c) == (0, 0):
            h, part = carry, None
            skip = _apply(pool, carry)   # the skip travels pooled (smaller) across a cut
        else:
            h, part, skip = unpack(carry, c)
        stop = tuple(end) if end is not None else (len(self.main_order), 0)
        new: State = {}
        while (k, c) < stop:
            name = self.main_order[k]
            mod = getattr(self, name)
            if k == stop[0]:                       # the cut ends inside this convolution's channels
                piece = self._channels(k, h, c, stop[1])
                part = piece if part is None else torch.cat([part, piece], 2)
                c = stop[1]
                break
            if c:                                  # finish a convolution cut between its channels
                rest = self._channels(k, h, c, self.stage_channels(k))
                h = self._after_conv(mod, torch.cat([part, rest], 2))
                part = None
            elif isinstance(mod, Temporal):
                h, s = mod.run(h, sub_state(state, name))
                new.update(prefixed(s, name))
            else:
                h = per_step(mod, h)
            k, c = k + 1, 0
        if end is not None:
            return pack(h, part, skip), new
        idn = _apply(project, skip)
        y, s = getattr(self, self.last_lif).run(h + idn, sub_state(state, self.last_lif))
        new.update(prefixed(s, self.last_lif))
        return y, new

    def _downsample_parts(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """The downsample's leading parameter-free poolings, and the rest (its 1x1 conv and BN)."""
        if self.downsample is None:
            return [], []
        mods = list(self.downsample) if isinstance(self.downsample, nn.Sequential) else [self.downsample]
        n = 0
        while n < len(mods) and isinstance(mods[n], (nn.AvgPool2d, nn.MaxPool2d)):
            n += 1
        return mods[:n], mods[n:]

    def _channels(self, k: int, h: Tensor, lo: int, hi: int) -> Tensor:
        """Output channels ``[lo, hi)`` of unit k's convolution (bias included, before its BN)."""
        conv = _conv_of(getattr(self, self.main_order[k]))
        w = conv.weight[lo:hi]
        b = conv.bias[lo:hi] if conv.bias is not None else None
        return per_step(lambda t: F.conv2d(t, w, b, conv.stride, conv.padding, conv.dilation, conv.groups), h)

    @staticmethod
    def _after_conv(mod: nn.Module, h: Tensor) -> Tensor:
        """What unit ``mod`` applies after its convolution (its BN) to the joined channels ``h``."""
        return _apply(list(mod)[1:] if isinstance(mod, nn.Sequential) else [], h)


def _apply(mods: Sequence[nn.Module], x: Tensor) -> Tensor:
    """Stateless modules in order, on every step of ``x[t, B, ...]``."""
    for m in mods:
        x = per_step(m, x)
    return x


def _conv_of(mod: nn.Module) -> Optional[nn.Conv2d]:
    """The Conv2d of a ``conv`` or ``Sequential(conv, BN...)`` unit that can be cut between its output
    channels (no groups, zero padding), else None."""
    conv = mod[0] if isinstance(mod, nn.Sequential) and len(mod) else mod
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    if isinstance(mod, nn.Sequential) and not all(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in list(mod)[1:]):
        return None   # only per-channel ops may follow: the join must come before them
    return conv


class BasicBlock(_Residual):
    expansion = 1
    main_order = ("conv1", "lif1", "conv2")
    last_lif = "lif2"

    def __init__(self, ci: int, width: int, stride: int, n: NeuronSpec, norm_state: bool):
        super().__init__()
        co = width
        self.conv1 = conv_bn(ci, width, 3, stride, 1, n.bias)
        self.lif1 = n.soma(width, norm_state)
        self.conv2 = conv_bn(width, co, 3, 1, 1, n.bias)
        self.downsample = downsample(ci, co, stride, n.bias) if stride != 1 or ci != co else None
        self.lif2 = n.soma(co, norm_state)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2[1]


class Bottleneck(_Residual):
    expansion = 4
    main_order = ("conv1", "lif1", "conv2", "lif2", "conv3")
    last_lif = "lif3"

    def __init__(self, ci: int, width: int, stride: int, n: NeuronSpec, norm_state: bool):
        super().__init__()
        co = width * self.expansion
        self.conv1 = conv_bn(ci, width, 1, 1, 0, n.bias)
        self.lif1 = n.soma(width, norm_state)
        self.conv2 = conv_bn(width, width, 3, stride, 1, n.bias)
        self.lif2 = n.soma(width, norm_state)
        self.conv3 = conv_bn(width, co, 1, 1, 0, n.bias)
        self.downsample = downsample(ci, co, stride, n.bias) if stride != 1 or ci != co else None
        self.lif3 = n.soma(co, norm_state)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]


class InputNorm(nn.Module):
    """``(x - mean) / std`` per channel (BIDL's ``norm=dict(mean=[...], std=[...])``); the constants
    are not part of the state_dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int):
        super().__init__()
        if len(mean) != channels or len(std) != channels or any(float(s) == 0 for s in std):
            raise ValueError(f"norm=dict(mean={list(mean)}, std={list(std)}): expected {channels} means and "
                             f"{channels} non-zero stds (input_channels={channels})")
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _input_norm(norm: Any, channels: int) -> tuple[Optional[InputNorm], bool]:
    """(input normaliser or None, BN on every LIF state) from the ``norm`` keyword."""
    if norm is None:
        return None, False
    if norm == "bn":  # the project's earlier spelling of norm_state=True
        return None, True
    if isinstance(norm, Mapping) and set(norm) <= {"mean", "std"} and {"mean", "std"} <= set(norm):
        return InputNorm(norm["mean"], norm["std"], channels), False
    raise ValueError(f"norm={norm!r}: expected None or dict(mean=[...], std=[...]) (input normalisation, "
                     "one value per input channel)")


@BACKBONES.register("ResNetLifItout", "ResNetLifItout_MP")
class ResNetLifItout(Backbone):
    """Spiking ResNet; ``depth`` in 10/18/34/50/101/152 (stage sizes in ``arch_settings``).

    Keywords are BIDL's; ``down_t`` must be ``[1, 'max'|'avg']`` (every time step is processed);
    ``h, w`` are the per-step input size, used for shapes and specs only (any size runs; without them
    the size comes from ``models_compile_inputshape`` or the data -- BIDL defaults them to 224 but
    never uses them). Project options:
    ``norm_state`` (BN on every LIF state), ``conv_bias``, ``neuron``/``neuron_config``/``lifplus_form``,
    ``surrogate_width``, ``bn_stats`` (the conv and downsample BatchNorms' training statistics: 'step',
    per time step, BIDL's itout, the default; 'frames', over all frames of a chunk).
    """

    arch_settings = {
        10: (BasicBlock, (1, 1, 1, 1)),
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, nclass: int, low_resolut: bool = False, timestep: int = 8,
                 h: Optional[int] = None, w: Optional[int] = None, input_channels: int = 3, stem_channels: int = 64, base_channels: int = 64,
                 down_t: Sequence = (1, "max"), zero_init_residual: bool = False, noise: float = 1e-3,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share", norm: Any = None,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None, norm_state: bool = False,
                 conv_bias: bool = True, surrogate_width: float = 1.0, lifplus_form: str = "documented",
                 bn_stats: Optional[str] = None):
        super().__init__()
        if depth not in self.arch_settings:
            raise ValueError(f"depth={depth!r}: expected one of {sorted(self.arch_settings)}")
        if not isinstance(down_t, (list, tuple)) or len(down_t) != 2 or down_t[0] != 1:
            raise ValueError(f"down_t={down_t!r}: expected [1, 'max'|'avg'] (temporal downsampling "
                             "is not supported: every time step is processed)")
        in_norm, bn_state = _input_norm(norm, input_channels)
        norm_state = bool(norm_state) or bn_state
        n = NeuronSpec(cmode, soma_params, noise, neuron, neuron_config, norm_state, bool(conv_bias),
                       float(surrogate_width), lifplus_form)
        block, stages = self.arch_settings[depth]
        stem = []
        if in_norm is not None:
            self.input_norm = in_norm
            stem.append("input_norm")
        k, s, p = (3, 1, 1) if low_resolut else (7, 2, 3)
        self.conv = conv_bn(input_channels, stem_channels, k, s, p, n.bias)
        self.lif = n.soma(stem_channels, norm_state)
        stem += ["conv", "lif"]
        if not low_resolut:
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            stem.append("maxpool")
        paths, ci = [], stem_channels
        for i, nb in enumerate(stages):
            width = base_channels * 2 ** i
            layer = nn.ModuleList()
            for j in range(nb):
                layer.append(self.make_block(block, j, ci, width, 2 if (i > 0 and j == 0) else 1, n, norm_state))
                paths.append([f"layer{i + 1}.{j}"])
                ci = width * block.expansion
            self.add_module(f"layer{i + 1}", layer)
        if zero_init_residual:
            for (p_,) in paths:
                nn.init.zeros_(self.get_submodule(p_).last_bn().weight)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten(1)
        self.fc = nn.Linear(ci, nclass)
        self.depth = depth
        shape = (input_channels, h, w) if h is not None and w is not None else None
        self._finish(paths, timestep, amode, shape, stem=stem, head=["avgpool", "flat", "fc"], bn_stats=bn_stats)

    def steps_result(self, y: Tensor, steps: int) -> Tensor:
        """BIDL's GPU path: ``fc`` of the pooled features summed over the ``steps`` given and divided by
        ``timestep``. The accumulator holds ``sum_t fc(f_t) / timestep``, whose bias counts
        ``steps / timestep`` times: it is counted once."""
        if self.short_mean != "timestep" or self.acc.amode != "mean" or steps == self.timestep:
            return y
        return y - self.fc.bias * ((steps - self.timestep) / self.timestep)

    def make_block(self, block: type, index: int, ci: int, width: int, stride: int, n: NeuronSpec,
                   norm_state: bool) -> nn.Module:
        """Block ``index`` of a stage (a hook for variants whose first block differs from the rest)."""
        return block(ci, width, stride, n, norm_state)
