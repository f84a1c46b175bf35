"""BIDL's Sequential "itout" backbones (``Seq*Itout``), module for module with BIDL's names.

Each is a stack of ``Conv2dLif`` layers ``clif1..n`` (with max-pools ``mp1..n`` on the spikes, or
``mp=True`` inside the layer: pooling before the neuron), a ``flat`` Flatten, and either an MLP
``head`` (``nn.Sequential`` of Linear/ReLU: keys ``head.0``, ``head.2``, ...), a single Linear ``fc``,
or ``FcLif`` layers ``flif1..n``; the per-step logits go to the temporal accumulator. A new one is a
few lines on :class:`SeqBackbone`: register BIDL's modules in BIDL's order (that order is the
state_dict's and the optimizer's), then ``_finish`` with the blocks a ``split`` may cut between.

Keywords are BIDL's (``input_channels, h, w``; the user guide's ``c0, h0, w0`` are accepted by
:func:`~bidl_models.build_backbone`), plus the project's layout options: ``norm_state`` (True:
BN on the membrane state, BIDL's; False: BN on the current), ``conv_bias`` (True, BIDL's),
``surrogate_width`` (1.0, BIDL's), ``lifplus_form`` ('documented' | 'bidl'; configs default to 'bidl').
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import nn

from ..registry import BACKBONES
from .base import Backbone, NeuronSpec, check_itout


def mlp(feat: int, widths: Sequence[int]) -> nn.Sequential:
    """BIDL's MLP head: ``Linear(feat, w0), ReLU, Linear(w0, w1), ReLU, ..., Linear(.., nclass)``."""
    mods: list[nn.Module] = []
    ci = feat
    for i, co in enumerate(widths):
        mods.append(nn.Linear(ci, co))
        if i < len(widths) - 1:
            mods.append(nn.ReLU())
        ci = co
    return nn.Sequential(*mods)


def mlp_blocks(head: str, n_linear: int, first: Sequence[str] = ("flat",)) -> list[list[str]]:
    """One block per Linear of an :func:`mlp` called ``head`` (its ReLU goes with it); ``first``
    (the flatten) goes with the first block."""
    blocks = []
    for i in range(n_linear):
        parts = list(first) if i == 0 else []
        parts.append(f"{head}.{2 * i}")
        if i < n_linear - 1:
            parts.append(f"{head}.{2 * i + 1}")
        blocks.append(parts)
    return blocks


class SeqBackbone(Backbone):
    """Shared construction of the ``Seq*`` backbones: the neuron options and the input shape."""

    def _neurons(self, cmode: str, soma_params: Any, noise: float, neuron: str, neuron_config: Optional[Sequence],
                 norm_state: bool, conv_bias: bool, surrogate_width: float, lifplus_form: str,
                 spike_func: Any, use_inner_loop: bool) -> NeuronSpec:
        check_itout(spike_func, use_inner_loop, type(self).__name__)
        return NeuronSpec(cmode, soma_params, noise, neuron, neuron_config, bool(norm_state), bool(conv_bias),
                          float(surrogate_width), lifplus_form)

    def _conv_stack(self, n: NeuronSpec, specs: Sequence[tuple[int, int, int, int, bool, bool]], ci: int) -> list[list[str]]:
        """Register ``clif1..`` from ``(co, k, stride, padding, mp_inside, mp_after)`` each; returns one
        block per layer (``clif<i>`` with its ``mp<i>``)."""
        blocks = []
        for i, (co, k, s, p, mp_in, mp_after) in enumerate(specs, 1):
            self.add_module(f"clif{i}", n.conv(ci, co, k, s, p, mp=mp_in))
            blocks.append([f"clif{i}"])
            if mp_after:
                self.add_module(f"mp{i}", nn.MaxPool2d(2, stride=2))
                blocks[-1].append(f"mp{i}")
            ci = co
        return blocks


@BACKBONES.register()
class SeqClif3Fc3DmItout(SeqBackbone):
    """DVS-MNIST: 3 x (``Conv2dLif`` 3x3 s1 p1 -> MaxPool 2) with 32, 64, 128 channels; ``head`` =
    Linear 512 - ReLU - 128 - ReLU - nclass."""

    def __init__(self, timestep: int = 20, input_channels: int = 2, h: int = 40, w: int = 40, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share", noise: float = 0,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None, spike_func: Any = None,
                 use_inner_loop: bool = False, norm_state: bool = True, conv_bias: bool = True,
                 surrogate_width: float = 1.0, lifplus_form: str = "documented"):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        blocks = self._conv_stack(n, [(32, 3, 1, 1, False, True), (64, 3, 1, 1, False, True),
                                      (128, 3, 1, 1, False, True)], input_channels)
        self.flat = nn.Flatten(1)
        feat = self.features([p for b in blocks for p in b], (input_channels, h, w))
        self.head = mlp(feat, (512, 128, nclass))
        self._finish(blocks + mlp_blocks("head", 3), timestep, amode, (input_channels, h, w))


@BACKBONES.register()
class SeqClif5Fc2CdItout(SeqBackbone):
    """CIFAR10-DVS: ``Conv2dLif`` 5x5 s2 p2 (32) + MaxPool; 4 x ``Conv2dLif`` 3x3 (64..512) + MaxPool;
    ``head`` = Linear 512 - ReLU - nclass."""

    def __init__(self, timestep: int = 10, input_channels: int = 2, h: int = 128, w: int = 128, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share", noise: float = 0,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None, spike_func: Any = None,
                 use_inner_loop: bool = False, norm_state: bool = True, conv_bias: bool = True,
                 surrogate_width: float = 1.0, lifplus_form: str = "documented"):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        blocks = self._conv_stack(n, [(32, 5, 2, 2, False, True)] + [(c, 3, 1, 1, False, True)
                                                                      for c in (64, 128, 256, 512)], input_channels)
        self.flat = nn.Flatten(1)
        feat = self.features([p for b in blocks for p in b], (input_channels, h, w))
        self.head = mlp(feat, (512, nclass))
        self._finish(blocks + mlp_blocks("head", 2), timestep, amode, (input_channels, h, w))


@BACKBONES.register()
class SeqClif3Flif2DgItout(SeqBackbone):
    """DVS128 Gesture: ``norm`` BN on the input; ``Conv2dLif`` 3x3 s2 p1 (64, 128, 256); ``flif1``
    FcLif 256; ``flif2`` FcLif nclass (its output, spikes with ``fmode='spike'``, are the logits)."""

    def __init__(self, timestep: int = 60, input_channels: int = 2, h: int = 40, w: int = 40, nclass: int = 11,
                 cmode: str = "spike", fmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0.001, neuron: str = "lif", neuron_config: Optional[Sequence] = None,
                 spike_func: Any = None, use_inner_loop: bool = False, norm_state: bool = True,
                 conv_bias: bool = True, surrogate_width: float = 1.0, lifplus_form: str = "documented"):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        self.norm = nn.BatchNorm2d(input_channels)
        blocks = self._conv_stack(n, [(c, 3, 2, 1, False, False) for c in (64, 128, 256)], input_channels)
        self.flat = nn.Flatten(1)
        feat = self.features(["norm"] + [p for b in blocks for p in b], (input_channels, h, w))
        f = n.with_mode(fmode)
        self.flif1 = f.fc(feat, 256)
        self.flif2 = f.fc(256, nclass)
        self._finish(blocks + [["flat", "flif1"], ["flif2"]], timestep, amode, (input_channels, h, w),
                     stem=["norm"])


@BACKBONES.register("SeqClif7Fc1CdItout", "SeqClif7Fc1DgItout")
class SeqClif7Fc1CdItout(SeqBackbone):
    """7 x ``Conv2dLif`` 3x3 s1 p1 with the max-pool inside (before the neuron): 64, 64, 128, 128,
    256, 256, 512 channels; ``fc`` Linear(512, nclass) at 128x128. Defaults are BIDL's constructor's."""

    def __init__(self, timestep: int = 60, input_channels: int = 2, h: int = 40, w: int = 40, nclass: int = 11,
                 cmode: str = "spike", fmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0.001, neuron: str = "lif", neuron_config: Optional[Sequence] = None,
                 spike_func: Any = None, use_inner_loop: bool = False, norm_state: bool = True,
                 conv_bias: bool = True, surrogate_width: float = 1.0, lifplus_form: str = "documented"):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        chans = (64, 64, 128, 128, 256, 256, 512)
        blocks = self._conv_stack(n, [(c, 3, 1, 1, True, False) for c in chans], input_channels)
        self.flat = nn.Flatten(1)
        feat = self.features([p for b in blocks for p in b], (input_channels, h, w))
        self.fc = nn.Linear(feat, nclass)
        self.fmode = fmode  # accepted as BIDL's constructor does; the head is a plain Linear
        self._finish(blocks + [["flat", "fc"]], timestep, amode, (input_channels, h, w))
