"""BIDL's Sequential backbones (``Seq*Itout``, ``Seq*It``, the LIF+ ``SeqClifplus*``), module for
module with BIDL's names.

Each is a stack of ``Conv2dLif`` layers ``clif1..n`` (with max-pools ``mp1..n`` on the spikes, or
``mp=True`` inside the layer: pooling before the neuron), a ``flat`` Flatten, and either an MLP
``head`` (``nn.Sequential`` of Linear/ReLU: keys ``head.0``, ``head.2``, ...), a single Linear ``fc``,
or ``FcLif`` layers ``flif1..n``. Two ways to reach the logits, as BIDL's two modes:

* itout (``*Itout``): the head runs on every step, the temporal accumulator averages its outputs;
* It (``*It``): the ``avg`` :class:`~bidl_models.temporal_layers.Aggregation` averages the features
  over time *before* the head (streamed: the head sees the running mean; after the last step it is
  the mean over all T), and the result is the last step's. The same weights give the same logits in
  both modes where the head is linear (``fc``), not where it has a ReLU (``head``), as BIDL's.

A new one is a few lines on :class:`SeqBackbone`: register BIDL's modules in BIDL's order (that
order is the state_dict's and the optimizer's), then ``_finish`` with the blocks a ``split`` may cut
between; a variant that only changes defaults is :func:`variant`. ``it_batch`` (BIDL's It-mode batch
baked into the model) is accepted and not needed: nothing here depends on the batch size.

Keywords are BIDL's (``input_channels, h, w``; the user guide's ``c0, h0, w0`` are accepted by
:func:`~bidl_models.build_backbone`), plus the project's layout options: ``norm_state`` (True:
BN on the membrane state, BIDL's; False: BN on the current), ``conv_bias`` (True, BIDL's),
``surrogate_width`` (1.0, BIDL's), ``lifplus_form`` ('documented' | 'bidl'; configs default to 'bidl'),
``bn_stats`` (how a BatchNorm on a per-step tensor -- ``norm_state=False``'s current, the Gesture
nets' input ``norm`` -- takes its training statistics: 'step', per time step, BIDL's itout; 'frames',
over all frames of a chunk, BIDL's It; default BIDL's for the class).
"""
from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

from torch import nn

from ..registry import BACKBONES
from ..temporal_layers import Aggregation
from .base import Backbone, NeuronSpec, check_itout

#: Conv stacks, one ``(out channels, kernel, stride, padding, pool inside, pool after)`` per layer.
CONV3 = tuple((c, 3, 1, 1, False, True) for c in (32, 64, 128))
CONV5 = ((32, 5, 2, 2, False, True),) + tuple((c, 3, 1, 1, False, True) for c in (64, 128, 256, 512))
CH7 = (64, 64, 128, 128, 256, 256, 512)
CONV7_INSIDE = tuple((c, 3, 1, 1, True, False) for c in CH7)
CONV7_AFTER = tuple((c, 3, 1, 1, False, True) for c in CH7)


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
    """Shared construction of the ``Seq*`` backbones: the neuron options, the conv stack, the heads."""

    required_neuron: Optional[str] = None   # 'lifplus' for BIDL's SeqClifplus* classes

    def _neurons(self, cmode: str, soma_params: Any, noise: float, neuron: str, neuron_config: Optional[Sequence],
                 norm_state: bool, conv_bias: bool, surrogate_width: float, lifplus_form: str,
                 spike_func: Any = None, use_inner_loop: bool = False) -> NeuronSpec:
        check_itout(spike_func, use_inner_loop, type(self).__name__)
        if self.required_neuron is not None and str(neuron).lower() != self.required_neuron:
            raise ValueError(f"{type(self).__name__}: neuron={neuron!r}; expected {self.required_neuron!r} (BIDL's "
                             f"{self.required_neuron.upper()} class; for LIF use the Seq*Clif* class of the same net)")
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

    def _head(self, feat: int, widths: Sequence[int], first: Sequence[str]) -> list[list[str]]:
        """``widths`` of one Linear: ``fc``; of several: the MLP ``head``. Returns its blocks."""
        if len(widths) == 1:
            self.fc = nn.Linear(feat, widths[0])
            return [list(first) + ["fc"]]
        self.head = mlp(feat, widths)
        return mlp_blocks("head", len(widths), first)

    def _build(self, n: NeuronSpec, convs: Sequence, widths: Sequence[int], timestep: int, amode: str,
               shape: Sequence[int], it: bool, bn_stats: Optional[str] = None) -> None:
        """Conv stack, then (itout) ``flat`` and the head per step, the accumulator averaging; or (It)
        ``avg`` over time, ``flat``, the head, the last step's result."""
        blocks = self._conv_stack(n, convs, shape[0])
        conv_paths = [p for b in blocks for p in b]
        if it:
            self.avg = Aggregation(amode, 0, -1, timestep)
        self.flat = nn.Flatten(1)
        first = ("avg", "flat") if it else ("flat",)
        blocks += self._head(self.features(conv_paths, shape), widths, first)
        self._finish(blocks, timestep, "pick" if it else amode, shape, bn_stats=bn_stats)


def variant(base: type, name: str, doc: str, attrs: Optional[dict] = None, **defaults: Any) -> type:
    """Register ``name``: ``base`` with other keyword defaults (and class attributes ``attrs``); its
    signature (what configs are checked against) shows them."""
    sig = inspect.signature(base.__init__)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:
        raise TypeError(f"variant {name}: {base.__name__} has no keywords {unknown}")
    new_sig = sig.replace(parameters=[p.replace(default=defaults[p.name]) if p.name in defaults else p
                                      for p in sig.parameters.values()])

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = new_sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        base.__init__(self, **{k: v for k, v in bound.arguments.items() if k != "self"})

    __init__.__signature__ = new_sig  # type: ignore[attr-defined]
    cls = type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": base.__module__,
                               "__qualname__": name, **(attrs or {})})
    return BACKBONES.register(name)(cls)


# ------------------------------------------------------------------------------------ itout


@BACKBONES.register()
class SeqClif3Fc3DmItout(SeqBackbone):
    """DVS-MNIST: 3 x (``Conv2dLif`` 3x3 s1 p1 -> MaxPool 2) with 32, 64, 128 channels; ``head`` =
    Linear 512 - ReLU - 128 - ReLU - nclass."""

    def __init__(self, timestep: int = 20, input_channels: int = 2, h: int = 40, w: int = 40, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share", noise: float = 0,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None, spike_func: Any = None,
                 use_inner_loop: bool = False, norm_state: bool = True, conv_bias: bool = True,
                 surrogate_width: float = 1.0, lifplus_form: str = "documented", bn_stats: Optional[str] = None):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        self._build(n, CONV3, (512, 128, nclass), timestep, amode, (input_channels, h, w), it=False,
                    bn_stats=bn_stats)


@BACKBONES.register()
class SeqClif5Fc2CdItout(SeqBackbone):
    """CIFAR10-DVS: ``Conv2dLif`` 5x5 s2 p2 (32) + MaxPool; 4 x ``Conv2dLif`` 3x3 (64..512) + MaxPool;
    ``head`` = Linear 512 - ReLU - nclass."""

    def __init__(self, timestep: int = 10, input_channels: int = 2, h: int = 128, w: int = 128, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share", noise: float = 0,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None, spike_func: Any = None,
                 use_inner_loop: bool = False, norm_state: bool = True, conv_bias: bool = True,
                 surrogate_width: float = 1.0, lifplus_form: str = "documented", bn_stats: Optional[str] = None):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        self._build(n, CONV5, (512, nclass), timestep, amode, (input_channels, h, w), it=False,
                    bn_stats=bn_stats)


@BACKBONES.register()
class SeqClif3Flif2DgItout(SeqBackbone):
    """DVS128 Gesture: ``norm`` BN on the input; ``Conv2dLif`` 3x3 s2 p1 (64, 128, 256); ``flif1``
    FcLif 256; ``flif2`` FcLif nclass (its output, spikes with ``fmode='spike'``, are the logits)."""

    def __init__(self, timestep: int = 60, input_channels: int = 2, h: int = 40, w: int = 40, nclass: int = 11,
                 cmode: str = "spike", fmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0.001, neuron: str = "lif", neuron_config: Optional[Sequence] = None,
                 spike_func: Any = None, use_inner_loop: bool = False, norm_state: bool = True,
                 conv_bias: bool = True, surrogate_width: float = 1.0, lifplus_form: str = "documented",
                 bn_stats: Optional[str] = None):
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
                     stem=["norm"], bn_stats=bn_stats)


@BACKBONES.register("SeqClif7Fc1CdItout", "SeqClif7Fc1DgItout")
class SeqClif7Fc1CdItout(SeqBackbone):
    """7 x ``Conv2dLif`` 3x3 s1 p1 with the max-pool inside (before the neuron): 64, 64, 128, 128,
    256, 256, 512 channels; ``fc`` Linear(512, nclass) at 128x128. Defaults are BIDL's constructor's."""

    def __init__(self, timestep: int = 60, input_channels: int = 2, h: int = 40, w: int = 40, nclass: int = 11,
                 cmode: str = "spike", fmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share",
                 noise: float = 0.001, neuron: str = "lif", neuron_config: Optional[Sequence] = None,
                 spike_func: Any = None, use_inner_loop: bool = False, norm_state: bool = True,
                 conv_bias: bool = True, surrogate_width: float = 1.0, lifplus_form: str = "documented",
                 bn_stats: Optional[str] = None):
        super().__init__()
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form, spike_func, use_inner_loop)
        self.fmode = fmode  # accepted as BIDL's constructor does; the head is a plain Linear
        self._build(n, CONV7_INSIDE, (nclass,), timestep, amode, (input_channels, h, w), it=False,
                    bn_stats=bn_stats)


SeqClif3Fc3LcItout = variant(
    SeqClif3Fc3DmItout, "SeqClif3Fc3LcItout",
    "LUNA16 nodules (1x32x32, T=8, 2 classes): the SeqClif3Fc3DmItout network.",
    timestep=8, input_channels=1, h=32, w=32, nclass=2)
SeqClif5Fc2DmItout = variant(
    SeqClif5Fc2CdItout, "SeqClif5Fc2DmItout", "DVS-MNIST at 128x128, T=20: the SeqClif5Fc2CdItout network.",
    timestep=20)

_LIFPLUS = dict(attrs=dict(required_neuron="lifplus"), neuron="lifplus", lifplus_form="bidl")
SeqClifplus3Fc3DmItout = variant(SeqClif3Fc3DmItout, "SeqClifplus3Fc3DmItout",
                                 "SeqClif3Fc3DmItout with LIF+ neurons (BIDL's update: lifplus_form='bidl').",
                                 **_LIFPLUS)
SeqClifplus3Fc3LcItout = variant(SeqClif3Fc3LcItout, "SeqClifplus3Fc3LcItout",
                                 "SeqClif3Fc3LcItout with LIF+ neurons (BIDL's update: lifplus_form='bidl').",
                                 **_LIFPLUS)
SeqClifplus5Fc2CdItout = variant(SeqClif5Fc2CdItout, "SeqClifplus5Fc2CdItout",
                                 "SeqClif5Fc2CdItout with LIF+ neurons (BIDL's update: lifplus_form='bidl').",
                                 **_LIFPLUS)
SeqClifplus3Flifplus2DgItout = variant(SeqClif3Flif2DgItout, "SeqClifplus3Flifplus2DgItout",
                                       "SeqClif3Flif2DgItout with LIF+ neurons in every layer (BIDL's update: "
                                       "lifplus_form='bidl').", **_LIFPLUS)


# --------------------------------------------------------------------------------------- It


@BACKBONES.register()
class SeqClif5Fc2CdIt(SeqBackbone):
    """It mode of SeqClif5Fc2CdItout (same modules and keys): the features averaged over time by
    ``avg``, then the ReLU MLP ``head`` once (so not the itout model's logits on the same weights)."""

    convs: Sequence = CONV5
    widths = (512,)
    default_bn_stats = "frames"     # BIDL's It layers: TimeDistributed, one call on all T*B frames
    short_mean = "given"            # BIDL's Aggregation averages over the steps given

    def __init__(self, timestep: int = 10, input_channels: int = 2, h: int = 128, w: int = 128, nclass: int = 10,
                 cmode: str = "spike", amode: str = "mean", soma_params: Any = "all_share", noise: float = 0,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None, it_batch: int = 1,
                 norm_state: bool = True, conv_bias: bool = True, surrogate_width: float = 1.0,
                 lifplus_form: str = "documented", bn_stats: Optional[str] = None):
        super().__init__()
        if not isinstance(it_batch, int) or it_batch < 1:
            raise ValueError(f"{type(self).__name__}: it_batch={it_batch!r}: expected a positive int (accepted "
                             "for BIDL's files; any batch runs here)")
        n = self._neurons(cmode, soma_params, noise, neuron, neuron_config, norm_state, conv_bias, surrogate_width,
                          lifplus_form)
        self._build(n, self.convs, tuple(self.widths) + (nclass,), timestep, amode, (input_channels, h, w), it=True,
                    bn_stats=bn_stats)


SeqClif5Fc2DmIt = variant(SeqClif5Fc2CdIt, "SeqClif5Fc2DmIt", "It mode of SeqClif5Fc2DmItout (DVS-MNIST, T=20).",
                          timestep=20)
SeqClif3Fc3DmIt = variant(SeqClif5Fc2CdIt, "SeqClif3Fc3DmIt",
                          "It mode of SeqClif3Fc3DmItout: ``avg`` over time, then the MLP ``head``.",
                          attrs=dict(convs=CONV3, widths=(512, 128)), timestep=20, h=40, w=40)
SeqClif7Fc1CdIt = variant(SeqClif5Fc2CdIt, "SeqClif7Fc1CdIt",
                          "It mode of the CIFAR10-DVS 7-conv net, with BIDL's It layout: the max-pools ``mp1..7`` "
                          "after the neurons (the itout net pools before them), ``avg``, then ``fc``.",
                          attrs=dict(convs=CONV7_AFTER, widths=()), timestep=16, nclass=11)
SeqClif7Fc1DgIt = variant(SeqClif5Fc2CdIt, "SeqClif7Fc1DgIt",
                          "It mode of SeqClif7Fc1DgItout (pools inside the layers, as the itout net): ``avg`` over "
                          "time, then ``fc``; the same logits as the itout net on the same weights (fc is linear).",
                          attrs=dict(convs=CONV7_INSIDE, widths=()), timestep=16, nclass=11)
