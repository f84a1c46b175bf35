"""Layers run over chunks of time steps with explicit state.

Every layer is a :class:`Temporal` module: ``run(x[t, B, ...], state) -> (y[t, B, ...], state)``.
``state=None`` starts a fresh sample (all membranes zero). Two ways to iterate time give identical
results: ``step`` (one step per call, BIDL's "itout", the time loop outside as on a chip) and
``run`` over a whole chunk (BIDL's "it"; synapses are applied to all steps at once, the neuron
loops over time inside). Nothing about the batch size is stored in a layer.

``Lif1d``/``Lif2d``: a LIF neuron on an existing current ``[B, C]`` / ``[B, C, H, W]``.
``FcLif``: Linear -> (BN on the state) -> LIF.  ``Conv2dLif``: Conv2d -> (MaxPool2d(2)) -> BN -> LIF.
The ``LifPlus*`` counterparts use the LIFPlus neuron with a ``neuron_config``.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .neurons import (
    ACTIVATIONS, LIFPLUS_DEFAULTS, LIFParams, LIFPlusConfig, LIFPlusParams, LIFPlusState,
    LIFState, lif_step, lifplus_step,
)
from .specs import State, TensorSpec, prefixed, specs_of, sub_state

LIF_DEFAULTS: dict[str, float] = dict(alpha=0.3, beta=0.0, theta=0.5, v0=0.0)


def per_step(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Apply a stateless per-step op to every step of ``x[t, B, ...]`` in one call."""
    return fn(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class Temporal(nn.Module):
    """Base of every module that runs over a chunk of time steps with explicit state."""

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
                     t: int = 1) -> tuple[TensorSpec, list[TensorSpec]]:
        """(output spec per step, state specs) for a per-step input shape ``[B, ...]``; no compute."""
        was = self.training
        self.eval()
        log = logging.getLogger("torch._subclasses.fake_tensor")
        level = log.level
        log.setLevel(logging.CRITICAL)  # shape errors are re-raised by callers, not logged
        try:
            with FakeTensorMode(allow_non_fake_inputs=True):
                y, st = self.run(torch.zeros((t,) + tuple(in_shape), dtype=dtype))
                out = TensorSpec("y", tuple(y.shape[1:]), str(y.dtype).removeprefix("torch."))
                specs = specs_of(st)
        finally:
            self.train(was)
            log.setLevel(level)
        return out, specs

    def state_spec(self, in_shape: Sequence[int]) -> list[TensorSpec]:
        """Names, shapes and dtypes of this module's state for a per-step input ``[B, ...]``."""
        return self.trace_shapes(in_shape)[1]


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


# ------------------------------------------------------------------------------ soma params

def parse_soma_params(soma_params: Any) -> tuple[str, bool, dict[str, float]]:
    """``'all_share' | 'channel_share' | dict(share=..., learnable=..., alpha=..., ...)``.

    Returns (share, learnable, initial values). Learnable defaults to False for all_share and
    True for channel_share.
    """
    if isinstance(soma_params, str):
        soma_params = {"share": soma_params}
    if not isinstance(soma_params, Mapping):
        raise ValueError(f"soma_params={soma_params!r}: expected 'all_share', 'channel_share' or a dict")
    d = dict(soma_params)
    share = d.pop("share", "all_share")
    if share not in ("all_share", "channel_share"):
        raise ValueError(f"soma_params share={share!r}: expected 'all_share' or 'channel_share'")
    learnable = bool(d.pop("learnable", share == "channel_share"))
    return share, learnable, {k: float(v) for k, v in d.items()}


class Soma(Temporal):
    """A spiking neuron layer on an existing current (the neuron of Lif1d/Lif2d/LifPlus1d/2d).

    ``neuron='lif'`` or ``'lifplus'`` (with ``neuron_config``). Parameters are one scalar each
    (``all_share``) or one value per channel (``channel_share``, needs ``channels``).
    ``norm_state`` adds a BatchNorm on the integrated state U. ``surrogate_width`` is the width of
    the rectangle surrogate gradient.
    """

    spatial: int = 2  # number of spatial dims after the channel dim

    def __init__(self, channels: Optional[int] = None, mode: str = "spike",
                 soma_params: Any = "all_share", noise: float = 0.0, norm_state: bool = False,
                 memb_mode: Sequence = (0, "relu"), surrogate_width: float = 1.0,
                 neuron: str = "lif", neuron_config: Optional[Sequence] = None):
        super().__init__()
        if mode not in ("spike", "analog"):
            raise ValueError(f"mode={mode!r}: expected 'spike' or 'analog'")
        neuron = str(neuron).lower()
        if neuron not in ("lif", "lifplus"):
            raise ValueError(f"neuron={neuron!r}: expected 'lif' or 'lifplus'")
        k, act = int(memb_mode[0]), memb_mode[1]
        if not 0 <= k <= 3 or act not in ACTIVATIONS:
            raise ValueError(f"memb_mode={tuple(memb_mode)!r}: expected (k in 0..3, act in {sorted(ACTIVATIONS)})")
        if surrogate_width <= 0:
            raise ValueError(f"surrogate_width={surrogate_width}: expected > 0")
        share, learnable, init = parse_soma_params(soma_params)
        if share == "channel_share" and not channels:
            raise ValueError("soma_params='channel_share' needs the layer's channel count")
        self.mode, self.memb_mode, self.noise = mode, (k, act), float(noise)
        self.width, self.neuron, self.share = float(surrogate_width), neuron, share
        self.cfg = LIFPlusConfig.from_list(neuron_config) if neuron == "lifplus" else None
        defaults = dict(LIF_DEFAULTS if neuron == "lif" else LIFPLUS_DEFAULTS)
        unknown = set(init) - set(defaults)
        if unknown:
            raise ValueError(f"soma_params keys {sorted(unknown)}: expected some of {sorted(defaults)}")
        defaults.update(init)
        self.param_names = tuple(defaults)
        for name, val in defaults.items():
            t = torch.full((channels,) if share == "channel_share" else (), val, dtype=torch.float32)
            if learnable:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        norm_cls = nn.BatchNorm2d if self.spatial == 2 else nn.BatchNorm1d
        self.norm = norm_cls(channels) if norm_state else None

    def _shaped(self, ndim: int) -> list[Tensor]:
        vals = [getattr(self, n) for n in self.param_names]
        if self.share == "all_share":
            return vals
        shape = (1, -1) + (1,) * (ndim - 2)
        return [v.view(shape) for v in vals]

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        kw = dict(mode=self.mode, memb_mode=self.memb_mode, norm=self.norm, noise=self.noise,
                  training=self.training, width=self.width)
        vals = self._shaped(x.dim() - 1)
        outs = []
        if self.neuron == "lif":
            p = LIFParams(*vals)
            st = LIFState(state["v"]) if state else None
            for t in range(x.shape[0]):
                y, st = lif_step(x[t], st, p, **kw)
                outs.append(y)
            return torch.stack(outs), {"v": st.v}
        p = LIFPlusParams(*vals)
        st = LIFPlusState(**state) if state else None
        for t in range(x.shape[0]):
            y, st = lifplus_step(x[t], st, p, self.cfg, **kw)
            outs.append(y)
        return torch.stack(outs), {n: getattr(st, n) for n in self.cfg.state_names()}

    def extra_repr(self) -> str:
        cfg = f", neuron_config={self.cfg}" if self.cfg else ""
        return f"neuron={self.neuron}, mode={self.mode}, share={self.share}, noise={self.noise}{cfg}"


class Lif2d(Soma):
    """LIF on a current ``[B, C, H, W]``."""

    spatial = 2

    def __init__(self, channels: Optional[int] = None, **kw):
        kw.setdefault("neuron", "lif")
        super().__init__(channels, **kw)


class Lif1d(Soma):
    """LIF on a current ``[B, C]``."""

    spatial = 1

    def __init__(self, channels: Optional[int] = None, **kw):
        kw.setdefault("neuron", "lif")
        super().__init__(channels, **kw)


class LifPlus2d(Lif2d):
    """LIFPlus on a current ``[B, C, H, W]``."""

    def __init__(self, channels: Optional[int] = None, neuron_config: Optional[Sequence] = None, **kw):
        super().__init__(channels, neuron="lifplus", neuron_config=neuron_config, **kw)


class LifPlus1d(Lif1d):
    """LIFPlus on a current ``[B, C]``."""

    def __init__(self, channels: Optional[int] = None, neuron_config: Optional[Sequence] = None, **kw):
        super().__init__(channels, neuron="lifplus", neuron_config=neuron_config, **kw)


class FcLif(Temporal):
    """Linear -> (BN on the state) -> LIF. State: ``soma.*``."""

    soma_cls = Lif1d

    def __init__(self, ci: int, co: int, mode: str = "spike", soma_params: Any = "all_share",
                 noise: float = 0.0, norm_state: bool = False, bias: bool = True, **soma_kw):
        super().__init__()
        self.fc = nn.Linear(ci, co, bias=bias)
        self.soma = self.soma_cls(co, mode=mode, soma_params=soma_params, noise=noise,
                                  norm_state=norm_state, **soma_kw)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        y, s = self.soma.run(per_step(self.fc, x), sub_state(state, "soma"))
        return y, prefixed(s, "soma")


class Conv2dLif(Temporal):
    """Conv2d -> (MaxPool2d(2) if ``mp``) -> BatchNorm2d -> LIF. State: ``soma.*``."""

    soma_cls = Lif2d

    def __init__(self, ci: int, co: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 mode: str = "spike", soma_params: Any = "all_share", noise: float = 0.0,
                 mp: bool = False, norm_state: bool = False, bias: bool = False, **soma_kw):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(ci, co, kernel_size, stride, padding, bias=bias)]
        if mp:
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.BatchNorm2d(co))
        self.synapse = nn.Sequential(*layers)
        self.soma = self.soma_cls(co, mode=mode, soma_params=soma_params, noise=noise,
                                  norm_state=norm_state, **soma_kw)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        y, s = self.soma.run(per_step(self.synapse, x), sub_state(state, "soma"))
        return y, prefixed(s, "soma")


class FcLifPlus(FcLif):
    """Linear -> LIFPlus (``neuron_config`` as in the user guide)."""

    soma_cls = LifPlus1d


class Conv2dLifPlus(Conv2dLif):
    """Conv2d -> (MaxPool2d(2)) -> BN -> LIFPlus."""

    soma_cls = LifPlus2d


def soma_for(neuron: str, spatial: int) -> type[Soma]:
    """The soma class for ``neuron`` ('lif' | 'lifplus') on 1 or 2 spatial dims."""
    table = {("lif", 1): Lif1d, ("lif", 2): Lif2d, ("lifplus", 1): LifPlus1d, ("lifplus", 2): LifPlus2d}
    return table[(neuron, spatial)]
