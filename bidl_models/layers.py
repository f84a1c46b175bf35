"""Layers run over chunks of time steps with explicit state, named and laid out as BIDL's.

Every layer is a :class:`Temporal` module: ``run(x[t, B, ...], state) -> (y[t, B, ...], state)``.
``state=None`` starts a fresh sample. Two ways to iterate time give identical results: ``step`` (one
step per call, BIDL's "itout", the time loop outside as on a chip) and ``run`` over a whole chunk
(BIDL's "it"; synapses are applied to all steps at once, the neuron loops over time inside).
Nothing about the batch size is stored in a layer.

Module and parameter names are BIDL's, so a BIDL state_dict is this model's state_dict:

* :class:`Lif` -- BIDL's LIF cell: parameters ``alpha, beta, theta, v_0`` (shape ``[]`` for
  ``all_share``, ``[1, C, 1, 1]`` / ``[1, C]`` for ``channel_share``; not learnable unless
  ``learn=True``), optional ``norm`` (BatchNorm on the integrated state); state ``v``.
* :class:`LifPlus` -- BIDL's LIF+ cell (``form='bidl'``: BIDL's update and parameter names;
  ``form='documented'``: the documented Euler form, see :mod:`bidl_models.neurons`).
* :class:`Lif1d` / :class:`Lif2d` -- a ``lif`` cell on an existing current ``[B, C]`` / ``[B, C, H, W]``.
* :class:`FcLif` -- ``p0`` Linear -> ``lif`` (BN on the state by default).
* :class:`Conv2dLif` -- ``p0`` Conv2d (bias) -> ``pool`` (MaxPool2d(2) if ``mp``) -> ``norm`` -> ``lif``.
  ``norm_state=True`` (default): BN on the membrane state inside the cell, ``U = BN(X + V)``;
  ``norm_state=False``: BN on the current, ``norm`` = BatchNorm2d, then the cell.
* :class:`FcLifPlus`, :class:`Conv2dLifPlus`, :class:`LifPlus1d`, :class:`LifPlus2d`: the LIF+
  counterparts (cell named ``lifplus``; ``LifPlus1d/2d`` are the cell itself, as in BIDL).
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .neurons import (
    ACTIVATIONS, BIDL_LIFPLUS_DEFAULTS, LIFPLUS_DEFAULTS, LIFParams, LIFPlusConfig, LIFPlusParams,
    LIFPlusState, LIFState, bidl_lifplus_param_names, bidl_lifplus_state_names, lif_step, lifplus_bidl_step,
    lifplus_step,
)
from .specs import State, TensorSpec, prefixed, specs_of, sub_state

LIF_DEFAULTS: dict[str, float] = dict(alpha=0.3, beta=0.0, theta=0.5, v_0=0.0)
LIFPLUS_FORMS = ("bidl", "documented")


#: How a training-mode BatchNorm on a per-step tensor (a current, an input) takes its batch statistics
#: over a chunk ``x[t, B, ...]``: ``'step'``, once per time step over its B samples (BIDL's itout
#: models: ``t`` running-statistics updates); ``'frames'``, once over all ``t * B`` frames (BIDL's It
#: models' ``TimeDistributed``: one update). Eval mode (running statistics) is the same either way.
BN_STATS = ("step", "frames")


def set_bn_stats(module: nn.Module, mode: str, where: str = "bn_stats") -> None:
    """Mark every BatchNorm in ``module`` with ``mode`` (one of :data:`BN_STATS`), read by :func:`per_step`."""
    if mode not in BN_STATS:
        raise ValueError(f"{where}={mode!r}: expected one of {list(BN_STATS)}")
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.bn_stats = mode


def _steps_bn(fn: Any) -> bool:
    """True when ``fn`` holds a training-mode BatchNorm that takes its statistics per time step."""
    return isinstance(fn, nn.Module) and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and getattr(m, "bn_stats", "frames") == "step"
        for m in fn.modules())


def step_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """A training-mode BatchNorm applied to every step of ``x[t, B, C, ...]`` as if called once per step:
    step ``i`` is normalised with the mean and (biased) variance of ``x[i]`` over B and the spatial dims,
    and the running statistics take ``t`` updates in step order (momentum ``m``, unbiased variance)::

        y[i] = (x[i] - mean_i) / sqrt(var_i + eps) * weight + bias
        running <- (1 - m) running + m stat_i,  i = 0 .. t-1;   num_batches_tracked += t

    computed in one call: the steps are laid side by side as ``t * C`` channels of ``[B, t*C, ...]``."""
    t, b, c = x.shape[:3]
    rest = x.shape[3:]
    wide = x.transpose(0, 1).reshape((b, t * c) + rest)
    weight = bn.weight.repeat(t) if bn.weight is not None else None
    bias = bn.bias.repeat(t) if bn.bias is not None else None
    y = F.batch_norm(wide, None, None, weight, bias, True, 0.0, bn.eps)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            dims = (0,) + tuple(range(2, wide.dim()))
            mean = wide.mean(dims).view(t, c)
            var = wide.var(dims, unbiased=True).view(t, c)
            for i in range(t):
                bn.num_batches_tracked.add_(1)
                m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                bn.running_mean.mul_(1.0 - m).add_(mean[i].to(bn.running_mean.dtype), alpha=m)
                bn.running_var.mul_(1.0 - m).add_(var[i].to(bn.running_var.dtype), alpha=m)
    return y.reshape((b, t, c) + rest).transpose(0, 1)


def _per_row(fn: Any) -> bool:
    """True when ``fn`` holds a matmul (``nn.Linear``): BLAS may block a product by its row count, so
    the rows of a ``t * B`` call need not have the bits of ``t`` calls of ``B`` rows."""
    return isinstance(fn, nn.Module) and any(isinstance(m, nn.Linear) for m in fn.modules())


def per_step(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a stateless per-step op to every step of ``x[t, B, ...]``: in one call on the ``t * B``
    frames, except where a training-mode BatchNorm marked ``bn_stats='step'`` (:func:`set_bn_stats`)
    is inside: that BatchNorm takes the statistics of each step (:func:`step_batch_norm`; an
    ``nn.Sequential`` is split so that only it does; any other module holding one runs step by step),
    and a matmul (``nn.Linear``), called step by step so that a chunk of any length gives the bits of
    one step at a time."""
    if isinstance(fn, nn.Linear):
        return torch.stack([fn(x[i]) for i in range(x.shape[0])])
    if not _steps_bn(fn) and not _per_row(fn):
        return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])
    if isinstance(fn, nn.modules.batchnorm._BatchNorm):
        return step_batch_norm(fn, x)
    if isinstance(fn, nn.Sequential):
        for m in fn:
            x = per_step(m, x)
        return x
    return torch.stack([fn(x[i]) for i in range(x.shape[0])])


class Temporal(nn.Module):
    """Base of every module that runs over a chunk of time steps with explicit state.

    ``whole_sequence``: True for a layer that needs all T steps of a sample in one chunk (attention
    over time); the segments and the planner read it (no ``step()``, no time slices across it).
    """

    whole_sequence: bool = False

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        raise NotImplementedError

    def step(self, x_t: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        """One time step (``x_t``: ``[B, ...]``), the chip-style "itout" call."""
        y, s = self.run(x_t.unsqueeze(0), state)
        return y[0], s

    def forward(self, x: Tensor, state: Optional[State] = None) -> Tensor:
        """The whole sequence ``x[T, B, ...]`` from ``state`` (fresh if None); returns ``y[T, B, ...]``."""
        return self.run(x, state)[0]

    @torch.no_grad()
    def trace_shapes(self, in_shape: Sequence[int], dtype: torch.dtype = torch.float32,
                     t: Optional[int] = None) -> tuple[TensorSpec, list[TensorSpec]]:
        """(output spec per step, state specs) for a per-step input shape ``[B, ...]``; no compute.
        ``t``: the chunk length traced (default :func:`trace_steps`)."""
        t = trace_steps(self) if t is None else t
        with shape_tracing(self):
            y, st = self.run(torch.zeros((t,) + tuple(in_shape), dtype=dtype))
            return TensorSpec("y", tuple(y.shape[1:]), str(y.dtype).removeprefix("torch.")), specs_of(st)

    def state_spec(self, in_shape: Sequence[int]) -> list[TensorSpec]:
        """Names, shapes and dtypes of this module's state for a per-step input ``[B, ...]``."""
        return self.trace_shapes(in_shape)[1]


def trace_steps(module: nn.Module) -> int:
    """The chunk length a run of ``module`` needs at least: the ``T`` of a whole-sequence layer in
    it, else 1 (shape traces and cost counts use it)."""
    return max((int(m.T) for m in module.modules() if getattr(m, "whole_sequence", False)), default=1)


@contextmanager
def shape_tracing(module: nn.Module) -> Iterator[None]:
    """Run ``module`` on fake tensors (shapes only, no compute) in eval mode, without gradients; every
    submodule's mode is restored one by one afterwards (modules may be shared)."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)  # shape errors are re-raised by callers, not logged
    try:
        with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        log.setLevel(level)


class PerStep(Temporal):
    """Wraps a stateless module (conv, BN, pooling, linear, ...) and applies it to every step."""

    def __init__(self, *mods: nn.Module):
        super().__init__()
        self.body = mods[0] if len(mods) == 1 else nn.Sequential(*mods)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        return per_step(self.body, x), {}


class TemporalSequential(Temporal):
    """Named temporal children run in order; the state is the children's, under their names."""

    def __init__(self, children: Mapping[str, nn.Module] | Sequence[tuple[str, nn.Module]]):
        super().__init__()
        items = children.items() if isinstance(children, Mapping) else children
        for name, mod in items:
            self.add_module(name, mod if isinstance(mod, Temporal) else PerStep(mod))

    def __len__(self) -> int:
        return len(self._modules)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        new: State = {}
        for name, mod in self.named_children():
            x, s = mod.run(x, sub_state(state, name))
            new.update(prefixed(s, name))
        return x, new


class Chain(Temporal):
    """Modules of a model given by their dotted paths (``'clif1'``, ``'head.0'``, ``'layer2.1'``),
    run in order: stateless ones on every step, temporal ones with their state under their path
    (``'layer2.1.lif1.lif.v'``); a part with path None keeps its state names as they are.

    A chain does not own its modules: it is the unit a segment runs (stem, one block, head).
    """

    def __init__(self, parts: Sequence[tuple[Optional[str], nn.Module]]):
        super().__init__()
        self.paths = [p for p, _ in parts]
        self.parts = nn.ModuleList([m for _, m in parts])
        self.training = all(m.training for _, m in parts)  # a view: in the mode of what it holds

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        new: State = {}
        for path, mod in zip(self.paths, self.parts):
            if not isinstance(mod, Temporal):
                x = per_step(mod, x)
            elif path is None:
                x, s = mod.run(x, state)
                new.update(s)
            else:
                x, s = mod.run(x, sub_state(state, path))
                new.update(prefixed(s, path))
        return x, new

    def extra_repr(self) -> str:
        return ", ".join(str(p) for p in self.paths)


# ------------------------------------------------------------------------------ soma params

def parse_soma_params(soma_params: Any, names: Sequence[str]) -> tuple[str, bool, dict[str, float]]:
    """``'all_share' | 'channel_share' | dict(share=..., learn=..., <param>=value, ...)``.

    Returns (share, learnable, initial values). As in BIDL the parameters are not learnable unless
    ``learn=True`` (``learnable`` is accepted as a synonym); ``v0`` is accepted for ``v_0``.
    """
    if isinstance(soma_params, str):
        soma_params = {"share": soma_params}
    if not isinstance(soma_params, Mapping):
        raise ValueError(f"soma_params={soma_params!r}: expected 'all_share', 'channel_share' or a dict")
    d = dict(soma_params)
    share = d.pop("share", "all_share")
    if share not in ("all_share", "channel_share"):
        raise ValueError(f"soma_params share={share!r}: expected 'all_share' or 'channel_share'")
    if "learn" in d and "learnable" in d:
        raise ValueError("soma_params: give only one of 'learn' and 'learnable'")
    learn = bool(d.pop("learn", d.pop("learnable", False)))
    if "v0" in d and "v_0" in names:
        d["v_0"] = d.pop("v0")
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ValueError(f"soma_params keys {unknown}: expected some of {sorted(set(names) | {'share', 'learn'})}")
    return share, learn, {k: float(v) for k, v in d.items()}


def _memb_mode(memb_mode: Sequence) -> tuple[int, str]:
    """``(k, act)`` with act a name in ACTIVATIONS, a torch function (torch.relu, ...) or None."""
    if not isinstance(memb_mode, (list, tuple)) or len(memb_mode) != 2:
        raise ValueError(f"memb_mode={memb_mode!r}: expected (k in 0..3, activation)")
    k, act = memb_mode
    if callable(act):
        act = getattr(act, "__name__", str(act))
    act = "identity" if act is None else act
    if not isinstance(k, int) or not 0 <= k <= 3 or act not in ACTIVATIONS:
        raise ValueError(f"memb_mode={tuple(memb_mode)!r}: expected (k in 0..3, act in {sorted(ACTIVATIONS)})")
    return k, act


class _Cell(Temporal):
    """Shared parts of the LIF and LIF+ cells: parameters, mode, norm, noise, surrogate width."""

    def _setup(self, norm: Optional[nn.Module], mode: str, noise: float, surrogate_width: float,
               values: Mapping[str, float], soma_params: Any, channels: Optional[int], spatial: int) -> None:
        if mode not in ("spike", "analog"):
            raise ValueError(f"mode={mode!r}: expected 'spike' or 'analog'")
        if surrogate_width <= 0:
            raise ValueError(f"surrogate_width={surrogate_width}: expected > 0")
        share, learn, init = parse_soma_params(soma_params, list(values))
        if share == "channel_share" and not channels:
            raise ValueError("soma_params='channel_share' needs the layer's channel count")
        self.mode, self.noise, self.width, self.share = mode, float(noise), float(surrogate_width), share
        self.norm = norm
        # spatial 2: state [B, C, H, W] -> per channel [1, C, 1, 1]; spatial 1: state [B, C] -> [1, C]
        shape = () if share == "all_share" else (1, int(channels)) + ((1, 1) if spatial == 2 else ())
        vals = dict(values, **init)
        self.param_names = tuple(values)
        for name in self.param_names:
            self.register_parameter(name, nn.Parameter(torch.full(shape, vals[name]), requires_grad=learn))

    def _kw(self) -> dict:
        return dict(mode=self.mode, memb_mode=self.memb_mode, norm=self.norm, noise=self.noise,
                    training=self.training, width=self.width)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, share={self.share}, noise={self.noise}"


class Lif(_Cell):
    """BIDL's LIF cell on a current ``[B, C, ...]`` (equations in :mod:`bidl_models.neurons`). State ``v``."""

    def __init__(self, norm: Optional[nn.Module] = None, mode: str = "spike", memb_mode: Sequence = (0, "relu"),
                 soma_params: Any = "all_share", noise: float = 0.0, channels: Optional[int] = None,
                 spatial: int = 2, surrogate_width: float = 1.0):
        super().__init__()
        self.memb_mode = _memb_mode(memb_mode)
        self._setup(norm, mode, noise, surrogate_width, LIF_DEFAULTS, soma_params, channels, spatial)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        p = LIFParams(self.alpha, self.beta, self.theta, self.v_0)
        st = LIFState(state["v"]) if state else None
        kw = self._kw()
        outs = []
        for t in range(x.shape[0]):
            y, st = lif_step(x[t], st, p, **kw)
            outs.append(y)
        return torch.stack(outs), {"v": st.v}


class LifPlus(_Cell):
    """BIDL's LIF+ cell (``neuron_config = [input_accum, rev_volt, fire_refrac, spike_init,
    trig_current, memb_decay]``). ``form='bidl'``: BIDL's update, parameters and reset values
    (:func:`~bidl_models.neurons.lifplus_bidl_step`); ``form='documented'``: the documented Euler
    form (:func:`~bidl_models.neurons.lifplus_step`). Analog output default: tanh of U."""

    def __init__(self, norm: Optional[nn.Module] = None, mode: str = "spike", memb_mode: Sequence = (0, "tanh"),
                 soma_params: Any = "all_share", neuron_config: Optional[Sequence] = None, noise: float = 0.0,
                 channels: Optional[int] = None, spatial: int = 2, surrogate_width: float = 1.0,
                 form: str = "documented"):
        super().__init__()
        if form not in LIFPLUS_FORMS:
            raise ValueError(f"lifplus_form={form!r}: expected one of {list(LIFPLUS_FORMS)}")
        self.form, self.cfg = form, LIFPlusConfig.from_list(neuron_config)
        self.memb_mode = _memb_mode(memb_mode)
        if form == "bidl":
            names = bidl_lifplus_param_names(self.cfg)
            values = {n: BIDL_LIFPLUS_DEFAULTS[n] for n in names}
        else:
            values = dict(LIFPLUS_DEFAULTS)
        self._setup(norm, mode, noise, surrogate_width, values, soma_params, channels, spatial)

    def state_names(self) -> tuple[str, ...]:
        return bidl_lifplus_state_names(self.cfg) if self.form == "bidl" else self.cfg.state_names()

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        kw = self._kw()
        outs = []
        if self.form == "bidl":
            p = {n: getattr(self, n) for n in self.param_names}
            st: Any = state or None
            for t in range(x.shape[0]):
                y, st = lifplus_bidl_step(x[t], st, p, self.cfg, **kw)
                outs.append(y)
            return torch.stack(outs), dict(st)
        p = LIFPlusParams(*(getattr(self, n) for n in self.param_names))
        st = LIFPlusState(**state) if state else None
        for t in range(x.shape[0]):
            y, st = lifplus_step(x[t], st, p, self.cfg, **kw)
            outs.append(y)
        return torch.stack(outs), {n: getattr(st, n) for n in self.cfg.state_names()}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form}, neuron_config={self.cfg}"


def _state_bn(norm_state: bool | int, channels: Optional[int], spatial: int) -> Optional[nn.Module]:
    if not norm_state:
        return None
    if not channels:
        raise ValueError("norm_state needs the layer's channel count")
    return (nn.BatchNorm2d if spatial == 2 else nn.BatchNorm1d)(channels)


class _OnCurrent(Temporal):
    """A ``lif`` cell on an existing current (Lif1d / Lif2d)."""

    spatial = 2

    def __init__(self, channels: Optional[int] = None, norm_state: bool = False, mode: str = "spike",
                 memb_mode: Sequence = (0, "relu"), soma_params: Any = "all_share", noise: float = 0.0,
                 surrogate_width: float = 1.0):
        super().__init__()
        self.lif = Lif(_state_bn(norm_state, channels, self.spatial), mode, memb_mode, soma_params, noise,
                       channels, self.spatial, surrogate_width)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        y, s = self.lif.run(x, sub_state(state, "lif"))
        return y, prefixed(s, "lif")


class Lif2d(_OnCurrent):
    """LIF on a current ``[B, C, H, W]``; the cell is ``lif`` (keys ``lif.alpha``, ...)."""

    spatial = 2


class Lif1d(_OnCurrent):
    """LIF on a current ``[B, C]``; the cell is ``lif``."""

    spatial = 1


class _LifPlusOnCurrent(LifPlus):
    spatial = 2

    def __init__(self, channels: Optional[int] = None, norm_state: bool = False, mode: str = "spike",
                 memb_mode: Sequence = (0, "tanh"), soma_params: Any = "all_share",
                 neuron_config: Optional[Sequence] = None, noise: float = 0.0, surrogate_width: float = 1.0,
                 form: str = "documented"):
        super().__init__(_state_bn(norm_state, channels, self.spatial), mode, memb_mode, soma_params,
                         neuron_config, noise, channels, self.spatial, surrogate_width, form)


class LifPlus2d(_LifPlusOnCurrent):
    """LIF+ on a current ``[B, C, H, W]`` (the cell itself, as BIDL's: keys ``epsilon``, ...)."""

    spatial = 2


class LifPlus1d(_LifPlusOnCurrent):
    """LIF+ on a current ``[B, C]``."""

    spatial = 1


def _cell(neuron: str, norm: Optional[nn.Module], channels: int, spatial: int, mode: str, memb_mode: Optional[Sequence],
          soma_params: Any, noise: float, surrogate_width: float, neuron_config: Optional[Sequence],
          lifplus_form: str) -> Temporal:
    if neuron == "lif":
        if neuron_config is not None:
            raise ValueError(f"neuron_config={neuron_config!r} is only used with neuron='lifplus'")
        return Lif(norm, mode, memb_mode or (0, "relu"), soma_params, noise, channels, spatial, surrogate_width)
    return LifPlus(norm, mode, memb_mode or (0, "tanh"), soma_params, neuron_config, noise, channels, spatial,
                   surrogate_width, lifplus_form)


class _Synapse(Temporal):
    """``p0`` (the synapse) -> ``pool`` -> ``norm`` -> the cell (``lif`` or ``lifplus``). State ``<cell>.*``."""

    neuron = "lif"
    cell_name = "lif"

    def _attach(self, cell: Temporal) -> None:
        setattr(self, self.cell_name, cell)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        for mod in self._synapse():
            x = per_step(mod, x)
        y, s = getattr(self, self.cell_name).run(x, sub_state(state, self.cell_name))
        return y, prefixed(s, self.cell_name)

    def _synapse(self) -> tuple[nn.Module, ...]:
        """What makes the current, in order: ``p0``, ``pool``, ``norm``."""
        return self.p0, self.pool, self.norm


class Conv2dLif(_Synapse):
    """BIDL's Conv2dLif: ``p0`` Conv2d -> ``pool`` (MaxPool2d(2, 2) if ``mp``) -> ``norm`` -> ``lif``.

    ``norm_state=True``: BN on the membrane state inside the cell (``U = BN(X + V)``), ``norm`` is the
    identity; ``norm_state=False``: ``norm`` = BatchNorm2d on the current. ``bias=False`` gives a conv
    without bias (with ``norm_state=False``: the conv -> BN -> LIF layout).
    """

    def __init__(self, input_channel: int, hidden_channel: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, groups: int = 1, norm_state: bool = True,
                 mode: str = "spike", memb_mode: Optional[Sequence] = None, soma_params: Any = "all_share",
                 noise: float = 0.0, mp: bool = False, bias: bool = True, surrogate_width: float = 1.0,
                 neuron_config: Optional[Sequence] = None, lifplus_form: str = "documented"):
        super().__init__()
        self.p0 = nn.Conv2d(input_channel, hidden_channel, kernel_size, stride, padding, dilation, groups, bias=bias)
        self.pool = nn.MaxPool2d(2, 2) if mp else nn.Identity()
        bn_current = not norm_state and self.neuron == "lif"  # BIDL's Conv2dLifPlus has no current BN
        self.norm = nn.BatchNorm2d(hidden_channel) if bn_current else nn.Identity()
        state_bn = nn.BatchNorm2d(hidden_channel) if norm_state else None
        self._attach(_cell(self.neuron, state_bn, hidden_channel, 2, mode, memb_mode, soma_params, noise,
                           surrogate_width, neuron_config, lifplus_form))


class FcLif(_Synapse):
    """BIDL's FcLif: ``p0`` Linear -> ``lif`` with BN on the state (``norm_state=True``, default)."""

    def __init__(self, input_channel: int, hidden_channel: int, norm_state: bool = True, mode: str = "spike",
                 memb_mode: Optional[Sequence] = None, soma_params: Any = "all_share", noise: float = 0.0,
                 bias: bool = True, surrogate_width: float = 1.0, neuron_config: Optional[Sequence] = None,
                 lifplus_form: str = "documented"):
        super().__init__()
        self.p0 = nn.Linear(input_channel, hidden_channel, bias=bias)
        state_bn = nn.BatchNorm1d(hidden_channel) if norm_state else None
        self._attach(_cell(self.neuron, state_bn, hidden_channel, 1, mode, memb_mode, soma_params, noise,
                           surrogate_width, neuron_config, lifplus_form))

    def _synapse(self) -> tuple[nn.Module, ...]:
        return (self.p0,)


class Conv2dLifPlus(Conv2dLif):
    """BIDL's Conv2dLifPlus: ``p0`` Conv2d -> ``lifplus`` (BN on the state if ``norm_state``)."""

    neuron = "lifplus"
    cell_name = "lifplus"


class FcLifPlus(FcLif):
    """BIDL's FcLifPlus: ``p0`` Linear -> ``lifplus``."""

    neuron = "lifplus"
    cell_name = "lifplus"


def soma_for(neuron: str, spatial: int) -> type[Temporal]:
    """The neuron-on-a-current class for ``neuron`` ('lif' | 'lifplus') on 1 or 2 spatial dims."""
    table = {("lif", 1): Lif1d, ("lif", 2): Lif2d, ("lifplus", 1): LifPlus1d, ("lifplus", 2): LifPlus2d}
    if (neuron, spatial) not in table:
        raise ValueError(f"neuron={neuron!r}: expected 'lif' or 'lifplus'")
    return table[(neuron, spatial)]
