"""Spiking neurons as pure step functions with explicit state.

Every neuron here is a function ``step(x_t, state, params, ...) -> (out_t, new_state)``;
nothing is kept in module attributes. ``multistep`` runs a step function over ``[T, B, ...]``.

LIF (BIDL's default neuron), per time step with input current ``X_t`` and membrane ``V_{t-1}``::

    U   = X_t + V_{t-1}                     integration
    U   = norm(U)              (optional)   BatchNorm on the state ("norm_state")
    U'  = U + noise*std(U)*N(0,1)           training only: unbiased std over H, W (all of a [B, C]
                                            state), no gradient through the noise; U' replaces U below
                                            except in the analog output k=0
    F   = 1[U - theta > 0]                  fire (strict >), rectangle surrogate gradient
    R   = F * v0 + (1 - F) * U              hard reset
    V_t = alpha * R + beta                  leak (alpha is a retention factor)
    out = F                                 mode 'spike'
    out = act([U, U - theta, R, V_t][k])    mode 'analog', memb_mode = (k, act)

LIFPlus has two forms: :func:`lifplus_step`, the documented Euler equations of its six options
(the project's own), and :func:`lifplus_bidl_step`, BIDL's update exactly as its code computes it
(what BIDL-trained LIF+ weights need).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SpikeFn", "spike", "LIFParams", "LIFState", "lif_step", "multistep",
    "LIFPlusConfig", "LIFPlusParams", "LIFPlusState", "lifplus_step", "ACTIVATIONS",
    "BIDL_LIFPLUS_DEFAULTS", "bidl_lifplus_param_names", "bidl_lifplus_state_names", "lifplus_bidl_step",
]

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "identity": lambda u: u,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
}


class SpikeFn(torch.autograd.Function):
    """Heaviside ``F = 1[z > 0]`` with rectangle surrogate ``dF/dz = 1[|z| < w/2] / w``."""

    @staticmethod
    def forward(ctx, z: Tensor, width: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.width = width
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        w = ctx.width
        return grad * ((z.abs() < w / 2).to(grad.dtype) / w), None


def spike(z: Tensor, width: float = 1.0) -> Tensor:
    """Fire where ``z > 0``; differentiable through the rectangle surrogate when grad is needed."""
    if torch.is_grad_enabled() and z.requires_grad:
        return SpikeFn.apply(z, width)
    return (z > 0).to(z.dtype)


def _add_noise(u: Tensor, noise: float) -> Tensor:
    """``U + noise * std(U) * N(0, 1)`` as BIDL computes it: unbiased std over the dims after
    ``[B, C]`` (over all elements for a ``[B, C]`` state), no gradient through the noise. Where
    that is a single element (a 1x1 map) there is no noise (BIDL's std is NaN there)."""
    dims = tuple(range(2, u.dim()))
    n = math.prod(u.shape[2:]) if dims else u.numel()
    if n < 2:
        return u
    with torch.no_grad():
        std = u.std(dim=dims, keepdim=True) if dims else u.std().reshape((1,) * u.dim())
        n = noise * std * torch.randn_like(u)
    return u + n


class LIFParams(NamedTuple):
    """LIF parameters, each broadcastable to the state (scalar or ``[1, C, 1, 1]``-like)."""

    alpha: Tensor
    beta: Tensor
    theta: Tensor
    v0: Tensor


class LIFState(NamedTuple):
    """LIF state: the membrane potential ``v`` (same shape as the input current)."""

    v: Tensor


def lif_step(
    x: Tensor,
    state: Optional[LIFState],
    p: LIFParams,
    *,
    mode: str = "spike",
    memb_mode: tuple[int, str] = (0, "relu"),
    norm: Optional[Callable[[Tensor], Tensor]] = None,
    noise: float = 0.0,
    training: bool = False,
    width: float = 1.0,
) -> tuple[Tensor, LIFState]:
    """One LIF step (equations in the module docstring). ``state=None`` means a fresh sample (V=0)."""
    u = x if state is None else x + state.v
    if norm is not None:
        u = norm(u)
    u0 = u  # analog output k=0 is U before the training noise (as BIDL)
    if training and noise > 0:
        u = _add_noise(u, noise)
    f = spike(u - p.theta, width)
    r = f * p.v0 + (1.0 - f) * u
    v = p.alpha * r + p.beta
    if mode == "spike":
        return f, LIFState(v)
    k, act = memb_mode
    pick = (u0, u - p.theta, r, v)[k]
    return ACTIVATIONS[act](pick), LIFState(v)


def multistep(step: Callable, xs: Tensor, state, *args, **kwargs):
    """Run ``step(x_t, state, *args, **kwargs)`` over the leading time axis of ``xs``.

    Returns ``(stack of outputs [T, ...], final state)``.
    """
    outs = []
    for t in range(xs.shape[0]):
        y, state = step(xs[t], state, *args, **kwargs)
        outs.append(y)
    return torch.stack(outs), state


# ----------------------------------------------------------------------------------- LIFPlus

INPUT_ACCUM = ("CUB", "COBE", "COBA")
FIRE_REFRAC = ("none", "AR", "RR")
SPIKE_INIT = ("naive", "EXI", "QDI")
TRIG_CURRENT = ("naive", "ADT", "SBT")
MEMB_DECAY = ("alpha_beta", "EXD", "LID")


@dataclass(frozen=True)
class LIFPlusConfig:
    """The six LIFPlus options, as the user guide's ``neuron_config`` list orders them.

    ``[input_accum, rev_volt, fire_refrac, spike_init, trig_current, memb_decay]``:
    input_accum 0 CUB / 1 COBE / 2 COBA; rev_volt bool; fire_refrac 0 none / 1 AR / 2 RR;
    spike_init 0 naive / 1 EXI / 2 QDI; trig_current 0 naive / 1 ADT / 2 SBT;
    memb_decay 0 alpha-beta / 1 EXD / 2 LID.
    """

    input_accum: int = 0
    rev_volt: bool = False
    fire_refrac: int = 0
    spike_init: int = 0
    trig_current: int = 0
    memb_decay: int = 0

    @classmethod
    def from_list(cls, cfg: Optional[Sequence]) -> "LIFPlusConfig":
        if cfg is None:
            return cls()
        if not isinstance(cfg, (list, tuple)) or len(cfg) != 6:
            raise ValueError(
                f"neuron_config={cfg!r}: expected a list of 6 options [input_accum, rev_volt, "
                "fire_refrac, spike_init, trig_current, memb_decay]")
        out = cls(int(cfg[0]), bool(cfg[1]), int(cfg[2]), int(cfg[3]), int(cfg[4]), int(cfg[5]))
        for name, choices in (("input_accum", INPUT_ACCUM), ("fire_refrac", FIRE_REFRAC),
                              ("spike_init", SPIKE_INIT), ("trig_current", TRIG_CURRENT),
                              ("memb_decay", MEMB_DECAY)):
            val = getattr(out, name)
            if not 0 <= val < len(choices):
                raise ValueError(f"neuron_config {name}={val}: expected 0..{len(choices) - 1} "
                                 f"({', '.join(choices)})")
        return out

    def state_names(self) -> tuple[str, ...]:
        """Names of the state tensors this configuration needs, in ABI order."""
        names = ["v"]
        if self.input_accum >= 1:
            names.append("g")
        if self.input_accum == 2:
            names.append("h")
        if self.fire_refrac >= 1:
            names.append("r")
        if self.trig_current >= 1:
            names.append("w")
        if self.trig_current == 1 or self.fire_refrac == 2:
            names.append("s")  # previous step's spikes
        return tuple(dict.fromkeys(names))


class LIFPlusParams(NamedTuple):
    """LIFPlus parameters (documented defaults in :data:`LIFPLUS_DEFAULTS`)."""

    alpha: Tensor      # retention factor of the alpha-beta leak
    beta: Tensor       # additive leak term
    theta: Tensor      # firing threshold
    v0: Tensor         # reset / resting potential
    dt_tau: Tensor     # dt / tau_m of the EXD leak
    lam: Tensor        # LID: constant leak per step towards v0
    decay_g: Tensor    # dt / tau_g of the synaptic conductance (COBE, COBA)
    e_rev: Tensor      # reversal potential (rev_volt)
    delta_t: Tensor    # EXI sharpness
    v_t: Tensor        # EXI / QDI rheobase potential
    a0: Tensor         # QDI gain
    v_c: Tensor        # QDI critical potential
    dt_tau_w: Tensor   # adaptation current rate
    a_w: Tensor        # subthreshold coupling of adaptation
    b_w: Tensor        # spike-triggered adaptation increment (ADT)
    refrac: Tensor     # AR: refractory steps; RR: threshold jump per spike
    decay_r: Tensor    # RR: decay of the threshold jump per step


LIFPLUS_DEFAULTS: dict[str, float] = dict(
    alpha=0.3, beta=0.0, theta=0.5, v0=0.0, dt_tau=0.5, lam=0.05, decay_g=0.5, e_rev=1.0,
    delta_t=0.1, v_t=0.4, a0=0.5, v_c=0.4, dt_tau_w=0.2, a_w=0.1, b_w=0.05, refrac=2.0,
    decay_r=0.5,
)


class LIFPlusState(NamedTuple):
    """LIFPlus state; fields a configuration does not use are ``None``."""

    v: Tensor
    g: Optional[Tensor] = None
    h: Optional[Tensor] = None
    r: Optional[Tensor] = None
    w: Optional[Tensor] = None
    s: Optional[Tensor] = None


def lifplus_zero_state(x: Tensor, cfg: LIFPlusConfig) -> LIFPlusState:
    """Fresh state for a sample: every used tensor is zero (``s``, ``r`` included)."""
    z = torch.zeros_like(x)
    return LIFPlusState(**{n: z for n in cfg.state_names()})


def lifplus_step(
    x: Tensor,
    state: Optional[LIFPlusState],
    p: LIFPlusParams,
    cfg: LIFPlusConfig,
    *,
    mode: str = "spike",
    memb_mode: tuple[int, str] = (0, "relu"),
    norm: Optional[Callable[[Tensor], Tensor]] = None,
    noise: float = 0.0,
    training: bool = False,
    width: float = 1.0,
) -> tuple[Tensor, LIFPlusState]:
    """One LIFPlus step, explicit Euler, ``v`` the membrane of the previous step.

    Synaptic input ``I_syn``:
      CUB  ``I_syn = x_t``
      COBE ``g_t = g + decay_g * (-g) + x_t``;  ``I_syn = g_t``
      COBA ``h_t = h - decay_g * h + x_t``;  ``g_t = g + decay_g * (h_t - g)``;  ``I_syn = g_t``
    Reversal voltage (rev_volt): ``I = I_syn * (e_rev - v)``, else ``I = I_syn``.
    Spike initiation ``S(v)``: naive 0; EXI ``delta_t * exp((v - v_t) / delta_t)``;
      QDI ``a0 * (v - v0) * (v - v_c)``.
    Adaptation ``w`` (subtracted from the input): naive none;
      ADT ``w_t = w + dt_tau_w * (a_w * (v - v0) - w) + b_w * s``  (``s``: previous spikes);
      SBT ``w_t = w + dt_tau_w * (a_w * (v - v0) - w)``.
    Membrane update, ``J = I + S(v) - w_t``:
      alpha-beta  ``U = v + J``                          (leak applied after the reset)
      EXD         ``U = v + dt_tau * (v0 - v + J)``      (the documented Euler form)
      LID         ``U = v + J - lam * sign(v - v0)``     (clamped not to cross v0)
    Refractoriness: AR holds ``U = v0`` while the counter ``r > 0`` and sets ``r = refrac`` on a
      spike (``r`` counts down by 1 per step); RR raises the threshold by ``r``:
      ``r_t = decay_r * r + refrac * F``.
    Fire ``F = 1[U - theta_eff > 0]``, reset ``R = F*v0 + (1-F)*U``,
    new membrane ``V = alpha*R + beta`` for alpha-beta, ``V = R`` otherwise.
    Output as in LIF (``F`` or ``act([U, U - theta_eff, R, V][k])``).
    """
    if state is None:
        state = lifplus_zero_state(x, cfg)
    v = state.v
    new: dict[str, Tensor] = {}
    if cfg.input_accum == 0:
        i_syn = x
    elif cfg.input_accum == 1:
        g = state.g - p.decay_g * state.g + x
        new["g"], i_syn = g, g
    else:
        h = state.h - p.decay_g * state.h + x
        g = state.g + p.decay_g * (h - state.g)
        new["h"], new["g"], i_syn = h, g, g
    i = i_syn * (p.e_rev - v) if cfg.rev_volt else i_syn
    if cfg.spike_init == 1:
        i = i + p.delta_t * torch.exp(torch.clamp((v - p.v_t) / p.delta_t, max=20.0))
    elif cfg.spike_init == 2:
        i = i + p.a0 * (v - p.v0) * (v - p.v_c)
    if cfg.trig_current >= 1:
        w = state.w + p.dt_tau_w * (p.a_w * (v - p.v0) - state.w)
        if cfg.trig_current == 1:
            w = w + p.b_w * state.s
        new["w"] = w
        i = i - w
    if cfg.memb_decay == 0:
        u = v + i
    elif cfg.memb_decay == 1:
        u = v + p.dt_tau * (p.v0 - v + i)
    else:
        d = v - p.v0
        u = v + i - torch.sign(d) * torch.minimum(d.abs(), p.lam)
    if cfg.fire_refrac == 1:
        u = torch.where(state.r > 0, torch.zeros_like(u) + p.v0, u)
    if norm is not None:
        u = norm(u)
    if training and noise > 0:
        u = _add_noise(u, noise)
    theta = p.theta + state.r if cfg.fire_refrac == 2 else p.theta
    f = spike(u - theta, width)
    if cfg.fire_refrac == 1:
        f = f * (state.r <= 0).to(f.dtype)
        new["r"] = torch.where(f > 0, torch.zeros_like(u) + p.refrac, torch.clamp(state.r - 1.0, min=0.0))
    elif cfg.fire_refrac == 2:
        new["r"] = p.decay_r * state.r + p.refrac * f
    if "s" in cfg.state_names():
        new["s"] = f
    r = f * p.v0 + (1.0 - f) * u
    vn = p.alpha * r + p.beta if cfg.memb_decay == 0 else r
    new["v"] = vn
    out_state = LIFPlusState(**{n: new[n] for n in cfg.state_names()})
    if mode == "spike":
        return f, out_state
    k, act = memb_mode
    return ACTIVATIONS[act]((u, u - theta, r, vn)[k]), out_state


# ------------------------------------------------------------------------ LIFPlus, BIDL's form

#: BIDL's LIF+ parameter names in its registration (state_dict) order. BIDL draws every parameter
#: without a documented value from ``uniform[0, 1)``, unseeded; here such a parameter starts at 0.5,
#: the mean of that draw, so a model built twice is the same model.
BIDL_LIFPLUS_DEFAULTS: dict[str, float] = dict(
    epsilon=0.5, v_g=0.5, tau_recip=0.5, v_0=0.0, epsilon_r=0.5, v_rr=0.5, v_ar=0.5, q_r=0.5, b=0.5,
    epsilon_w=0.5, theta=0.5, v_theta=0.5, delta_t=0.5, v_c=0.5, a=0.5, v_w=0.5, alpha=0.3, beta=0.0,
    v_leak=0.5,
)
BIDL_CNT_MAX = 10.0  # absolute refractory period in steps (BIDL's ``cntmax``)


def bidl_lifplus_param_names(cfg: LIFPlusConfig) -> tuple[str, ...]:
    """The parameters BIDL's LIF+ registers for ``cfg``, in its order (its state_dict keys)."""
    names = []
    if cfg.input_accum in (1, 2):
        names.append("epsilon")
    if cfg.rev_volt:
        names.append("v_g")
    names += ["tau_recip", "v_0"]
    if cfg.fire_refrac == 2:
        names += ["epsilon_r", "v_rr", "v_ar", "q_r"]
    if cfg.fire_refrac == 2 or cfg.trig_current in (1, 2):
        names += ["epsilon_w", "b"]
    if cfg.spike_init != 2:
        names.append("theta")
    if cfg.spike_init in (1, 2):
        names.append("v_theta")
        names.append("delta_t" if cfg.spike_init == 1 else "v_c")
    if cfg.trig_current == 2:
        names += ["a", "v_w"]
    if cfg.memb_decay == 0:
        names += ["alpha", "beta"]
    elif cfg.memb_decay == 2:
        names.append("v_leak")
    return tuple(names)


def bidl_lifplus_state_names(cfg: LIFPlusConfig) -> tuple[str, ...]:
    """State of BIDL's LIF+ for ``cfg``. BIDL starts ``g``, ``y`` and ``r`` at 1 for a fresh sample;
    they are carried as ``g_m1 = g - 1`` (etc.) so that an all-zero state is a fresh sample, the
    convention of the compiled artifacts and the grid."""
    names = []
    if cfg.input_accum in (1, 2):
        names.append("g_m1")
    if cfg.input_accum == 2:
        names.append("y_m1")
    if cfg.fire_refrac == 2:
        names.append("r_m1")
    if cfg.fire_refrac == 1:
        names.append("cnt")
    names.append("v")
    if cfg.trig_current in (1, 2) or cfg.fire_refrac == 2:
        names.append("w")
    return tuple(names)


def lifplus_bidl_step(
    x: Tensor,
    state: Optional[Mapping[str, Tensor]],
    p: Mapping[str, Tensor],
    cfg: LIFPlusConfig,
    *,
    mode: str = "spike",
    memb_mode: tuple[int, str] = (0, "tanh"),
    norm: Optional[Callable[[Tensor], Tensor]] = None,
    noise: float = 0.0,
    training: bool = False,
    width: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One step of LIF+ as BIDL computes it (``p``: parameters by BIDL's names; ``e`` = exp(1))::

        COBE  g = (1-epsilon) g + x           COBA  y = (1-epsilon) y + x;  g = (1-epsilon) g + e epsilon y
        vrev  = v_g - v if rev_volt else 1;   f2 = vrev * (x if CUB else g);   f4 = 0
        AR    f2 = 0 where cnt > 0;  cnt = max(cnt - 1, 0)
        RR    r = (1-epsilon_r) r;  w = (1-epsilon_w) w;  f4 += r (v_rr - v) + w (v_ar - v)
        spike_init naive: thr = theta, f3 = v_0 - v
                   EXI:   thr = v_theta, f3 = v_0 - v + delta_t exp((v - theta) - delta_t)
                   QDI:   thr = v_theta, f3 = (v_0 - v)(v_c - v)
        ADT   w = (1-epsilon_w) w             SBT  w = (1-epsilon_w) w + tau_recip a (v - v_w);   f4 += w
        U = x + tau_recip (f2 + f3) + f4;  U = norm(U);  F = 1[U - thr > 0];  R = F v_0 + (1-F) U
        AR    cnt = (1-F) cnt + 10 F          RR  r = (1-F) r + F (r - q_r)
        RR, ADT, SBT  w = (1-F) w + F (w - b)
        decay alpha-beta V = alpha R + beta;  EXD  V = tau_recip (f2 + f3) + f4;  LID  V = v + f2 - v_leak + f4
        out = F (spike) or act([U, U - thr, R, V][k]) (analog, memb_mode = (k, act), default tanh)

    so the input enters CUB twice, EXD and LID drop the reset, and a fresh sample starts with
    ``g = y = r = 1``, ``cnt = v = w = 0`` (BIDL's reset). Training noise is applied to U like the LIF's
    (BIDL's is a no-op: it perturbs a stale copy).
    """
    st = state or {}
    z = torch.zeros_like(x)
    v = st.get("v", z)
    new: dict[str, Tensor] = {}
    fact4: Tensor | float = 0.0
    if cfg.input_accum == 1:
        g = (1.0 - p["epsilon"]) * (st.get("g_m1", z) + 1.0) + x
    elif cfg.input_accum == 2:
        y = (1.0 - p["epsilon"]) * (st.get("y_m1", z) + 1.0) + x
        g = (1.0 - p["epsilon"]) * (st.get("g_m1", z) + 1.0) + math.e * p["epsilon"] * y
        new["y_m1"] = y - 1.0
    if cfg.input_accum in (1, 2):
        new["g_m1"] = g - 1.0
    v_rev = (p["v_g"] - v) if cfg.rev_volt else 1.0
    fact2 = v_rev * (x if cfg.input_accum == 0 else g)
    cnt = st.get("cnt", z)
    w = st.get("w", z)
    if cfg.fire_refrac == 1:
        fact2 = torch.where(cnt > 0, torch.zeros_like(fact2), fact2)
        cnt = torch.clamp(cnt - 1.0, min=0.0)
    elif cfg.fire_refrac == 2:
        r = (1.0 - p["epsilon_r"]) * (st.get("r_m1", z) + 1.0)
        w = (1.0 - p["epsilon_w"]) * w
        fact4 = fact4 + r * (p["v_rr"] - v) + w * (p["v_ar"] - v)
    if cfg.spike_init == 0:
        thr = p["theta"]
        fact3 = p["v_0"] - v
    elif cfg.spike_init == 1:
        thr = p["v_theta"]
        fact3 = p["v_0"] - v + p["delta_t"] * torch.exp((v - p["theta"]) - p["delta_t"])
    else:
        thr = p["v_theta"]
        fact3 = (p["v_0"] - v) * (p["v_c"] - v)
    if cfg.trig_current == 1:
        w = (1.0 - p["epsilon_w"]) * w
    elif cfg.trig_current == 2:
        w = (1.0 - p["epsilon_w"]) * w + p["tau_recip"] * p["a"] * (v - p["v_w"])
    if cfg.trig_current in (1, 2):
        fact4 = fact4 + w
    u = x + p["tau_recip"] * (fact2 + fact3) + fact4
    if norm is not None:
        u = norm(u)
    u0 = u
    if training and noise > 0:
        u = _add_noise(u, noise)
    o2 = u - thr
    f = spike(o2, width)
    f_inv = 1.0 - f
    res = f * p["v_0"] + f_inv * u
    if cfg.fire_refrac == 1:
        new["cnt"] = f_inv * cnt + f * BIDL_CNT_MAX
    elif cfg.fire_refrac == 2:
        new["r_m1"] = (f_inv * r + f * (r - p["q_r"])) - 1.0
    if cfg.fire_refrac == 2 or cfg.trig_current in (1, 2):
        w = f_inv * w + f * (w - p["b"])
        new["w"] = w
    if cfg.memb_decay == 0:
        vn = p["alpha"] * res + p["beta"]
    elif cfg.memb_decay == 1:
        vn = p["tau_recip"] * (fact2 + fact3) + fact4
    else:
        vn = v + fact2 - p["v_leak"] + fact4
    new["v"] = vn
    out_state = {n: new[n] for n in bidl_lifplus_state_names(cfg)}
    if mode == "spike":
        return f, out_state
    k, act = memb_mode
    return ACTIVATIONS[act]((u0, o2, res, vn)[k]), out_state
