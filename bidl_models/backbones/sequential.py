"""The user guide's Sequential "itout" backbones; blocks are the layers the guide lists.

Conv layers are ``Conv2dLif`` followed by ``MaxPool2d(2)`` on the spikes where the guide pools (as
its SeqClif3Fc3DmItout code does); the flatten goes with the first fully connected block.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from ..layers import Conv2dLif, FcLif, TemporalSequential
from ..registry import BACKBONES
from .base import Backbone


def soma_kwargs(cmode: str, soma_params: Any, noise: float, neuron: str,
                neuron_config: Optional[Sequence]) -> dict:
    """Neuron keyword arguments shared by every spiking layer of a backbone."""
    neuron = str(neuron).lower()
    if neuron not in ("lif", "lifplus"):
        raise ValueError(f"neuron={neuron!r}: expected 'lif' or 'lifplus'")
    if neuron == "lif" and neuron_config is not None:
        raise ValueError(f"neuron_config={neuron_config!r} is only used with neuron='lifplus'; "
                         "expected None for neuron='lif'")
    if cmode not in ("spike", "analog"):
        raise ValueError(f"cmode={cmode!r}: expected 'spike' or 'analog'")
    return dict(mode=cmode, soma_params=soma_params, noise=float(noise), neuron=neuron,
                neuron_config=neuron_config)


def flat_features(mods: Sequence[nn.Module], in_shape: Sequence[int]) -> int:
    """Features per sample after running ``mods`` on a per-step input of ``in_shape`` (no compute)."""
    net = TemporalSequential([(f"m{i}", m) for i, m in enumerate(mods)])
    try:
        out, _ = net.trace_shapes((1,) + tuple(in_shape))
    except RuntimeError as e:
        raise ValueError(f"input shape c0, h0, w0 = {list(in_shape)} is too small for this backbone's "
                         f"convolutions and poolings ({str(e).splitlines()[0]})") from None
    n = 1
    for d in out.shape[1:]:
        n *= d
    return n


def conv_block(ci: int, co: int, k: int, s: int, p: int, pool: bool, kw: dict) -> TemporalSequential:
    parts: list[tuple[str, nn.Module]] = [("cl", Conv2dLif(ci, co, k, s, p, **kw))]
    if pool:
        parts.append(("mp", nn.MaxPool2d(2)))
    return TemporalSequential(parts)


class SeqBackbone(Backbone):
    """Common construction of the Sequential backbones: convs, then a fully connected tail."""

    def _build(self, convs: Sequence[tuple[int, int, int, int, int, bool]], c0: int, h0: int, w0: int,
               fc_tail, timestep: int, amode: str, kw: dict, stem: Optional[nn.Module] = None) -> None:
        self.stem = TemporalSequential([("bn", stem)] if stem is not None else [])
        blocks = [conv_block(*c, kw=kw) for c in convs]
        feat = flat_features(([self.stem] if stem is not None else []) + blocks, (c0, h0, w0))
        blocks += fc_tail(feat)
        self.blocks = nn.ModuleList(blocks)
        self.head = TemporalSequential([])
        self._finish(timestep, amode, (c0, h0, w0))


def _mlp(feat: int, widths: Sequence[int]) -> list[TemporalSequential]:
    """Flatten + Linear/ReLU blocks ending in a plain Linear."""
    out, ci = [], feat
    for i, co in enumerate(widths):
        parts: list[tuple[str, nn.Module]] = [("flat", nn.Flatten(1))] if i == 0 else []
        parts.append(("fc", nn.Linear(ci, co)))
        if i < len(widths) - 1:
            parts.append(("act", nn.ReLU()))
        out.append(TemporalSequential(parts))
        ci = co
    return out


@BACKBONES.register()
class SeqClif3Fc3DmItout(SeqBackbone):
    """DVS-MNIST: 3 x (Conv2dLif 3x3 -> MaxPool 2) with 32, 64, 128 channels; Linear 512-128-nclass."""

    def __init__(self, timestep: int = 20, c0: int = 2, h0: int = 40, w0: int = 40, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0, neuron: str = "lif", neuron_config: Optional[Sequence] = None):
        super().__init__()
        kw = soma_kwargs(cmode, soma_params, noise, neuron, neuron_config)
        convs = [(c0, 32, 3, 1, 1, True), (32, 64, 3, 1, 1, True), (64, 128, 3, 1, 1, True)]
        self._build(convs, c0, h0, w0, lambda f: _mlp(f, (512, 128, nclass)), timestep, amode, kw)


@BACKBONES.register()
class SeqClif5Fc2CdItout(SeqBackbone):
    """CIFAR10-DVS: Conv2dLif 5x5 s2 (32) + MP; 4 x Conv2dLif 3x3 (64..512) + MP; Linear 512-nclass."""

    def __init__(self, timestep: int = 10, c0: int = 2, h0: int = 128, w0: int = 128, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0, neuron: str = "lif", neuron_config: Optional[Sequence] = None):
        super().__init__()
        kw = soma_kwargs(cmode, soma_params, noise, neuron, neuron_config)
        convs = [(c0, 32, 5, 2, 2, True), (32, 64, 3, 1, 1, True), (64, 128, 3, 1, 1, True),
                 (128, 256, 3, 1, 1, True), (256, 512, 3, 1, 1, True)]
        self._build(convs, c0, h0, w0, lambda f: _mlp(f, (512, nclass)), timestep, amode, kw)


@BACKBONES.register()
class SeqClif3Flif2DgItout(SeqBackbone):
    """DVS128 Gesture: BN on the input; Conv2dLif 3x3 s2 (64, 128, 256); FcLif 256; FcLif nclass."""

    def __init__(self, timestep: int = 60, c0: int = 2, h0: int = 40, w0: int = 40, nclass: int = 11,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0, neuron: str = "lif", neuron_config: Optional[Sequence] = None):
        super().__init__()
        kw = soma_kwargs(cmode, soma_params, noise, neuron, neuron_config)
        convs = [(c0, 64, 3, 2, 1, False), (64, 128, 3, 2, 1, False), (128, 256, 3, 2, 1, False)]

        def tail(feat: int) -> list[TemporalSequential]:
            return [TemporalSequential([("flat", nn.Flatten(1)), ("fl", FcLif(feat, 256, **kw))]),
                    TemporalSequential([("fl", FcLif(256, nclass, **kw))])]

        self._build(convs, c0, h0, w0, tail, timestep, amode, kw, stem=nn.BatchNorm2d(c0))


@BACKBONES.register()
class SeqClif7Fc1CdItout(SeqBackbone):
    """7 x Conv2dLif 3x3 (64, 64, 128, 128, 256, 256, 512), MaxPool 2 after layers 1, 2, 4, 6, 7;
    Linear nclass."""

    def __init__(self, timestep: int = 10, c0: int = 2, h0: int = 128, w0: int = 128, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0, neuron: str = "lif", neuron_config: Optional[Sequence] = None):
        super().__init__()
        kw = soma_kwargs(cmode, soma_params, noise, neuron, neuron_config)
        chans = (64, 64, 128, 128, 256, 256, 512)
        pools = (True, True, False, True, False, True, True)
        convs, ci = [], c0
        for co, pool in zip(chans, pools):
            convs.append((ci, co, 3, 1, 1, pool))
            ci = co
        self._build(convs, c0, h0, w0, lambda f: _mlp(f, (nclass,)), timestep, amode, kw)


BACKBONES.register("SeqClif7Fc1DgItout")(SeqClif7Fc1CdItout)
