"""NIR interop: run NIR graphs on the grid (:func:`from_nir`) and export models to NIR (:func:`to_nir`).

NIR (the Neuromorphic Intermediate Representation, the ``nir`` package, extra ``.[nir]``) describes
neurons in continuous time. Every NIR neuron here is discretised with forward Euler at the time step
``dt`` you state (the step the graph was trained at: snnTorch's exporter assumes ``dt = 1e-4``),
``x_t`` the node's summed input at step t, state from the previous step (zeros for a fresh sample)::

    LIF      tau dv/dt = (v_leak - v) + r I       U = (1 - dt/tau) v + (dt/tau) v_leak + (dt r/tau) x_t
             z = 1[U > v_threshold];  v = v_reset where z else U;   out z
    IF       dv/dt = r I                           U = v + dt r x_t;  fire and reset as LIF;  out z
    LI       tau dv/dt = (v_leak - v) + r I        v = (1 - dt/tau) v + (dt/tau) v_leak + (dt r/tau) x_t;  out v
    I        dv/dt = r I                           v = v + dt r x_t;  out v
    CubaLIF  tau_syn di/dt = -i + w_in S           i = (1 - dt/tau_syn) i + (dt/tau_syn) w_in x_t   (first)
             tau_mem dv/dt = (v_leak - v) + r i    U = (1 - dt/tau_mem) v + (dt/tau_mem) v_leak + (dt r/tau_mem) i
             fire and reset as LIF (the new current drives the membrane in the same step, as in snnTorch)
    CubaLI   as CubaLIF without fire and reset;  out v
    Threshold z = 1[x_t > threshold]
    Affine W x + b,  Linear W x,  Scale s * x,  Conv1d/Conv2d (torch semantics),  Flatten (dims
    without the batch), SumPool2d (sum over the window), AvgPool2d (mean, padding counted).

Several edges into one node sum; a nested NIRGraph node is inlined. Recurrent (cyclic) graphs,
``Delay`` and graphs with several inputs or outputs are refused with the node named.

The model :func:`from_nir` builds is a :class:`~bidl_models.backbones.base.Backbone`
(:class:`NirBackbone`): blocks are cut wherever a single tensor crosses the graph (each node of a
chain is a block; a residual branch stays inside one block), so ``model.segment(s, e)`` splits it
like any backbone and it compiles and runs on the grid. Its modules carry the NIR node names, as a
BIDL backbone's carry BIDL's: node ``'1'`` is ``model.get_submodule('1')`` with state ``'1.v'``, a
dotted name (a nested graph, or a node exported from ``layer1.0.lif1.lif``) is a nested module with
state ``'layer1.0.lif1.lif.v'``. The temporal accumulator is ``amode='pick'`` by default (``run``
returns the graph's per-step output). Configs name it as ``backbone=dict(type='NirGraph',
graph='net.nir', dt=1e-4)`` (registered with the other backbones; building it needs the ``nir``
package; a relative ``graph`` path is relative to the working directory, ``'{{ fileDirname }}/net.nir'``
makes it relative to the config file). Compile caches hash the file's content.

:func:`to_nir` maps BIDL's LIF cell (see :mod:`bidl_models.neurons`: ``U = X + V``, ``F = 1[U > theta]``,
``R = F v_0 + (1 - F) U``, ``V = alpha R + beta``) explicitly, at the stated ``dt``::

    0 <= alpha < 1:  LIF(tau = dt / (1 - alpha), r = tau / dt = 1 / (1 - alpha), v_leak = 0,
                         v_threshold = theta, v_reset = v_0)
    alpha == 1:      IF(r = 1 / dt, v_threshold = theta, v_reset = v_0)

so that ``1 - dt/tau = alpha`` (retention) and the input gain ``dt r / tau = 1``. NIR's state is the
membrane after the reset and before the leak (BIDL keeps it after the leak); both give the same
spikes at every step. ``beta`` must be 0: NIR's LIF would add the leak term ``beta`` at the first
step too, where BIDL starts from ``V = 0``. Nodes are named by module path (``clif1.p0``,
``clif1.lif``, ``layer1.0.conv1.0``, ``acc``). The layers export as they run: ``Conv2dLif`` /
``FcLif`` as ``p0`` -> ``pool`` -> ``norm`` -> ``lif``, a residual block as ``lif(main + downsample)``.
BatchNorm on currents (``norm_state=False``, ResNet's conv+BN) is folded into the preceding
Conv2d/Linear (eval statistics: ``W' = W s``, ``b' = b s + t``, ``s = gamma / sqrt(var + eps)``,
``t = beta - mean s``); a BatchNorm with no Conv2d/Linear before it (and ResNet's input
normalisation ``(x - mean) / std``) becomes a dense 1x1 Conv2d with a diagonal weight (2-D) or a
diagonal Affine (1-D). Average pooling (also global: ``AdaptiveAvgPool2d`` whose output divides the
input; ceil mode where it does not change the size) maps to AvgPool2d; the temporal accumulator to
an ``I`` node (``mean``: ``r = 1 / (T dt)``, ``sum``: ``r = 1 / dt``, ``pick``: nothing). Everything
else is refused by name (:class:`NirExportError`): max pooling (``mp`` layers and pools), BatchNorm on
the state (``norm_state=True``, BIDL's default for ``Conv2dLif`` and ``FcLif``), ReLU and other
activations, LIF+ neurons (both forms), analog (membrane) outputs, ``beta != 0``, ...
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, NoReturn, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .backbones.base import Backbone, TemporalAccumulator
from .backbones.resnet import InputNorm, _Residual
from .layers import Chain, Lif, LifPlus, PerStep, Temporal, TemporalSequential, _OnCurrent, _Synapse, per_step
from .neurons import spike
from .registry import BACKBONES
from .segments import Segment
from .specs import State, prefixed, sub_state

__all__ = ["from_nir", "to_nir", "NirBackbone", "NirExportError", "NirImportError", "NirMissingError", "SUPPORTED_NODES"]

SUPPORTED_NODES = ("Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "SumPool2d",
                   "AvgPool2d", "LIF", "CubaLIF", "IF", "LI", "CubaLI", "I", "Threshold", "NIRGraph")


class NirImportError(ValueError):
    """A NIR graph (or node) that :func:`from_nir` cannot run; the message names the node."""


class NirExportError(ValueError):
    """A module that NIR cannot express; the message names the module, its path and why."""


class NirMissingError(ImportError, ValueError):
    """The ``nir`` package (extra ``.[nir]``) is not installed. Also a ValueError, so the CLIs report a
    config naming ``type='NirGraph'`` in one line, as any other bad config."""


def _nir():
    try:
        import nir  # noqa: PLC0415 - optional extra
    except ImportError:
        raise NirMissingError("the 'nir' package is needed for NIR interop: pip install 'bidl-grid[nir]'") from None
    return nir


def _arr(v: Any, dtype=np.float64) -> np.ndarray:
    """A NIR field (numpy array, torch tensor, list or scalar) as a numpy array."""
    if isinstance(v, Tensor):
        v = v.detach().cpu().numpy()
    return np.asarray(v, dtype=dtype)


def _ints(v: Any, n: int) -> tuple[int, ...]:
    """``3 -> (3, 3)``, ``array([3, 2]) -> (3, 2)`` (NIR stores kernel/stride/padding both ways)."""
    a = np.atleast_1d(np.asarray(v)).astype(np.int64).tolist()
    if len(a) == 1:
        a = a * n
    if len(a) != n:
        raise NirImportError(f"expected {n} values, got {v!r}")
    return tuple(int(x) for x in a)


def _str(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


# ------------------------------------------------------------------------------ modules

class _NirNeuron(Temporal):
    """A NIR neuron node at time step ``dt``: its NIR parameters are float64 buffers (exported as is),
    the discrete coefficients are derived from them on every run (equations in the module docstring)."""

    nir_type: str = ""
    fields: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ("v",)

    def __init__(self, dt: float, **params: Any):
        super().__init__()
        self.dt = float(dt)
        for name in self.fields:
            self.register_buffer(name, torch.as_tensor(_arr(params[name])))

    def _p(self, name: str) -> Tensor:
        return getattr(self, name)

    def _leak(self, tau: Tensor, r: Tensor, v_leak: Optional[Tensor], dtype: torch.dtype
              ) -> tuple[Tensor, Tensor, Tensor]:
        """(retention 1 - dt/tau, additive dt/tau v_leak, input gain dt r/tau) in float64, cast."""
        k = self.dt / tau
        b = k * v_leak if v_leak is not None else torch.zeros_like(k)
        return (1.0 - k).to(dtype), b.to(dtype), (k * r).to(dtype)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        st = {n: (state[n] if state else torch.zeros_like(x[0])) for n in self.state_names}
        coef = self.coefficients(x.dtype)
        outs = []
        for t in range(x.shape[0]):
            y, st = self.step_fn(x[t], st, coef)
            outs.append(y)
        return torch.stack(outs), st

    def coefficients(self, dtype: torch.dtype) -> dict[str, Tensor]:
        raise NotImplementedError

    def step_fn(self, x: Tensor, st: dict[str, Tensor], c: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def nir_params(self, dt: float) -> dict[str, np.ndarray]:
        """The NIR fields for export at ``dt`` (the same discrete model: time constants scale with
        ``dt / self.dt``, rates of the integrators with ``self.dt / dt``)."""
        ratio = float(dt) / self.dt
        out = {}
        for n in self.fields:
            v = self._p(n).detach().cpu().numpy()
            if ratio != 1.0 and n.startswith("tau"):
                v = v * ratio
            elif ratio != 1.0 and n == "r" and not any(f.startswith("tau") for f in self.fields):
                v = v / ratio
            out[n] = v
        return out

    def nir_node(self, dt: float):
        return getattr(_nir(), self.nir_type)(**self.nir_params(dt))

    def extra_repr(self) -> str:
        return f"NIR {self.nir_type}, dt={self.dt:g}"


def _fire(u: Tensor, thr: Tensor, v_reset: Tensor) -> tuple[Tensor, Tensor]:
    f = spike(u - thr)
    return f, f * v_reset + (1.0 - f) * u


class NirLIF(_NirNeuron):
    nir_type, fields = "LIF", ("tau", "r", "v_leak", "v_threshold", "v_reset")

    def coefficients(self, dtype):
        a, b, g = self._leak(self.tau, self.r, self.v_leak, dtype)
        return dict(a=a, b=b, g=g, thr=self.v_threshold.to(dtype), v0=self.v_reset.to(dtype))

    def step_fn(self, x, st, c):
        u = c["a"] * st["v"] + c["b"] + c["g"] * x
        f, v = _fire(u, c["thr"], c["v0"])
        return f, {"v": v}


class NirIF(_NirNeuron):
    nir_type, fields = "IF", ("r", "v_threshold", "v_reset")

    def coefficients(self, dtype):
        return dict(g=(self.dt * self.r).to(dtype), thr=self.v_threshold.to(dtype), v0=self.v_reset.to(dtype))

    def step_fn(self, x, st, c):
        f, v = _fire(st["v"] + c["g"] * x, c["thr"], c["v0"])
        return f, {"v": v}


class NirLI(_NirNeuron):
    nir_type, fields = "LI", ("tau", "r", "v_leak")

    def coefficients(self, dtype):
        a, b, g = self._leak(self.tau, self.r, self.v_leak, dtype)
        return dict(a=a, b=b, g=g)

    def step_fn(self, x, st, c):
        v = c["a"] * st["v"] + c["b"] + c["g"] * x
        return v, {"v": v}


class NirI(_NirNeuron):
    nir_type, fields = "I", ("r",)

    def coefficients(self, dtype):
        return dict(g=(self.dt * self.r).to(dtype))

    def step_fn(self, x, st, c):
        v = st["v"] + c["g"] * x
        return v, {"v": v}


class NirCubaLIF(_NirNeuron):
    nir_type = "CubaLIF"
    fields = ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in")
    state_names = ("i", "v")

    def coefficients(self, dtype):
        a, b, g = self._leak(self.tau_mem, self.r, self.v_leak, dtype)
        k = self.dt / self.tau_syn
        return dict(a=a, b=b, g=g, ai=(1.0 - k).to(dtype), gi=(k * self.w_in).to(dtype),
                    thr=self.v_threshold.to(dtype), v0=self.v_reset.to(dtype))

    def step_fn(self, x, st, c):
        i = c["ai"] * st["i"] + c["gi"] * x
        f, v = _fire(c["a"] * st["v"] + c["b"] + c["g"] * i, c["thr"], c["v0"])
        return f, {"i": i, "v": v}


class NirCubaLI(NirCubaLIF):
    nir_type = "CubaLI"
    fields = ("tau_syn", "tau_mem", "r", "v_leak", "w_in")

    def coefficients(self, dtype):
        a, b, g = self._leak(self.tau_mem, self.r, self.v_leak, dtype)
        k = self.dt / self.tau_syn
        return dict(a=a, b=b, g=g, ai=(1.0 - k).to(dtype), gi=(k * self.w_in).to(dtype))

    def step_fn(self, x, st, c):
        i = c["ai"] * st["i"] + c["gi"] * x
        v = c["a"] * st["v"] + c["b"] + c["g"] * i
        return v, {"i": i, "v": v}


class NirScale(nn.Module):
    """``y = x * scale`` (NIR Scale)."""

    def __init__(self, scale: Any):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(_arr(scale, np.float32)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class NirThreshold(nn.Module):
    """``z = 1[x > threshold]`` (NIR Threshold; rectangle surrogate gradient)."""

    def __init__(self, threshold: Any):
        super().__init__()
        self.register_buffer("threshold", torch.as_tensor(_arr(threshold, np.float32)))

    def forward(self, x: Tensor) -> Tensor:
        return spike(x - self.threshold)


class NirSumPool2d(nn.Module):
    """Sum over each pooling window (NIR SumPool2d; zero padding)."""

    def __init__(self, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, divisor_override=1)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


_NEURONS: dict[str, type[_NirNeuron]] = {c.nir_type: c for c in (NirLIF, NirIF, NirLI, NirI, NirCubaLIF, NirCubaLI)}


def _module_for(name: str, node: Any, dt: float) -> nn.Module:
    """The torch/temporal module of one NIR node (NirImportError naming the node otherwise)."""
    kind = type(node).__name__
    try:
        if kind in _NEURONS:
            cls = _NEURONS[kind]
            return cls(dt, **{f: getattr(node, f) for f in cls.fields})
        if kind in ("Affine", "Linear"):
            w = _arr(node.weight, np.float32)
            if w.ndim != 2:
                raise NirImportError(f"weight of shape {list(w.shape)}: expected 2-D [out, in]")
            lin = nn.Linear(w.shape[1], w.shape[0], bias=kind == "Affine")
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                if kind == "Affine":
                    lin.bias.copy_(torch.from_numpy(np.broadcast_to(_arr(node.bias, np.float32), (w.shape[0],)).copy()))
            return lin
        if kind == "Scale":
            return NirScale(node.scale)
        if kind == "Threshold":
            return NirThreshold(node.threshold)
        if kind in ("Conv1d", "Conv2d"):
            nd = 1 if kind == "Conv1d" else 2
            w = _arr(node.weight, np.float32)
            pad = _str(node.padding)
            pad = pad if isinstance(pad, str) else _ints(pad, nd)
            cls = nn.Conv1d if nd == 1 else nn.Conv2d
            conv = cls(w.shape[1] * int(node.groups), w.shape[0], w.shape[2:], stride=_ints(node.stride, nd),
                       padding=pad, dilation=_ints(node.dilation, nd), groups=int(node.groups), bias=True)
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(w))
                b = node.bias if node.bias is not None else 0.0
                conv.bias.copy_(torch.from_numpy(np.broadcast_to(_arr(b, np.float32), (w.shape[0],)).copy()))
            return conv
        if kind == "Flatten":
            s, e = int(node.start_dim), int(node.end_dim)
            return nn.Flatten(s + 1 if s >= 0 else s, e + 1 if e >= 0 else e)
        if kind == "AvgPool2d":
            return nn.AvgPool2d(_ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2))
        if kind == "SumPool2d":
            return NirSumPool2d(_ints(node.kernel_size, 2), _ints(node.stride, 2), _ints(node.padding, 2))
    except NirImportError as e:
        raise NirImportError(f"from_nir: node {name!r} ({kind}): {e}") from None
    raise NirImportError(f"from_nir: node {name!r} has type {kind}, which this importer does not run; "
                         f"supported: {', '.join(SUPPORTED_NODES)}")


# ------------------------------------------------------------------------------ graph structure

_BLOCK_IN = "<block input>"


class NirGroup(nn.Module):
    """A namespace for NIR nodes whose names share a dotted prefix (a nested NIRGraph, or a graph
    exported from a model with nested modules: ``layer1.0.lif1.lif``). It runs nothing itself."""


#: Attributes a NirBackbone sets on itself; a NIR node of one of these names is renamed.
_BACKBONE_ATTRS = frozenset({"acc", "timestep", "input_shape", "layout", "dt", "nir_input", "nir_output",
                             "nir_names", "nir_blocks"})


def _module_paths(names: Sequence[str]) -> dict[str, str]:
    """The module path of every NIR node: its name, dotted parts kept as nested modules, other
    characters than ``[0-9A-Za-z_]`` replaced by ``_``. A name that cannot be a path -- a part that is
    an attribute of the backbone or of a module, a name that is a dotted prefix of another or equal
    to another after the replacement -- becomes one flat name (dots as ``_``, ``_1``, ``_2``, ... if
    taken)."""
    top_bad = set(dir(NirBackbone)) | set(vars(nn.Module())) | _BACKBONE_ATTRS
    any_bad = set(dir(NirGroup)) | set(vars(NirGroup()))

    def part(c: str) -> str:
        return re.sub(r"[^0-9A-Za-z_]", "_", c) or "node"

    cand = {n: [part(c) for c in str(n).split(".")] for n in names}

    def nestable(n: str) -> bool:
        p = cand[n]
        if p[0] in top_bad or any(c in any_bad for c in p):
            return False
        for m, q in cand.items():
            k = min(len(p), len(q))
            if m != n and p[:k] == q[:k]:   # equal, or one is a prefix of the other
                return False
        return True

    good = {n: ".".join(cand[n]) for n in names if nestable(n)}
    used = set(top_bad) | {p.split(".")[0] for p in good.values()}
    out: dict[str, str] = {}
    for n in names:
        if n in good:
            out[n] = good[n]
            continue
        base = "_".join(cand[n])
        s, k = base, 1
        while s in used:
            s, k = f"{base}_{k}", k + 1
        used.add(s)
        out[n] = s
    return out


class NirChain(Chain):
    """The NIR nodes of one block, by module path, run in topological order: a node's inputs (its
    predecessors' outputs, or the block's input) are summed; the block returns the sum of ``outs``.
    Each node's state lives under its path (``'1.v'``, ``'layer1.0.lif1.lif.v'``)."""

    def __init__(self, parts: Sequence[tuple[str, nn.Module]], preds: Mapping[str, Sequence[str]],
                 outs: Sequence[str], nir_names: Mapping[str, str]):
        super().__init__(parts)
        self.preds = {p: list(preds[p]) for p in self.paths}
        self.outs = list(outs)
        self.nir_names = {p: nir_names[p] for p in self.paths}

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        vals: dict[str, Tensor] = {_BLOCK_IN: x}
        new: State = {}
        for path, mod in zip(self.paths, self.parts):
            h = _sum([vals[p] for p in self.preds[path]])
            if isinstance(mod, Temporal):
                y, s = mod.run(h, sub_state(state, path))
                new.update(prefixed(s, path))
            else:
                y = per_step(mod, h)
            vals[path] = y
        return _sum([vals[p] for p in self.outs]), new

    def extra_repr(self) -> str:
        return f"nir nodes {[self.nir_names[p] for p in self.paths]}"


def _sum(xs: Sequence[Tensor]) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _inline(graph: Any, prefix: str = "") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Nodes and edges of ``graph`` with nested NIRGraph nodes inlined (names ``outer.inner``)."""
    nir = _nir()
    nodes: dict[str, Any] = {}
    edges: list[tuple[str, str]] = [(prefix + _str(a), prefix + _str(b)) for a, b in graph.edges]
    for name, node in graph.nodes.items():
        full = prefix + _str(name)
        if not isinstance(node, nir.NIRGraph):
            nodes[full] = node
            continue
        inner_nodes, inner_edges = _inline(node, full + ".")
        ins = [k for k, v in inner_nodes.items() if isinstance(v, nir.Input)]
        outs = [k for k, v in inner_nodes.items() if isinstance(v, nir.Output)]
        if len(ins) != 1 or len(outs) != 1:
            raise NirImportError(f"from_nir: subgraph {full!r} has {len(ins)} Input and {len(outs)} Output "
                                 "nodes; expected one of each")
        nodes.update({k: v for k, v in inner_nodes.items() if k not in (ins[0], outs[0])})
        into = [b for a, b in inner_edges if a == ins[0]]
        outof = [a for a, b in inner_edges if b == outs[0]]
        body = [(a, b) for a, b in inner_edges if a != ins[0] and b != outs[0]]
        new_edges = []
        for a, b in edges:
            if b == full and a == full:
                raise NirImportError(f"from_nir: subgraph {full!r} feeds itself (recurrent); not supported")
            if b == full:
                new_edges += [(a, c) for c in into]
            elif a == full:
                new_edges += [(p, b) for p in outof]
            else:
                new_edges.append((a, b))
        edges = new_edges + body
    return nodes, edges


def _topo(names: Sequence[str], preds: Mapping[str, Sequence[str]]) -> list[str]:
    """Kahn's order, ties in the graph's node order; NirImportError naming a node on a cycle."""
    indeg = {n: len(preds[n]) for n in names}
    succ: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for p in preds[n]:
            succ[p].append(n)
    ready = [n for n in names if indeg[n] == 0]
    order: list[str] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for s in succ[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    if len(order) != len(names):
        left = [n for n in names if n not in set(order)]
        raise NirImportError(f"from_nir: the graph is recurrent (a cycle through {left[0]!r}); only "
                             "feed-forward graphs can be cut into segments")
    return order


# ------------------------------------------------------------------------------ from_nir

@BACKBONES.register("NirGraph")
class NirBackbone(Backbone):
    """A NIR graph as a segmentable backbone (see :func:`from_nir` for the arguments).

    Every NIR node is a module named by its node name (``model.get_submodule('1')``, nested for
    dotted names: ``layer1.0.lif1.lif``), so the state_dict keys are ``<node>.<field>`` and the state
    ``<node>.v`` (``<node>.i`` for CubaLIF's current), as a BIDL backbone names its own.
    ``nir_names`` maps each module path back to its NIR node name.
    """

    #: config keys that name files the model is built from (hashed into compile cache keys)
    config_files = ("graph",)

    def __init__(self, graph: Any, dt: Optional[float] = None, amode: str = "pick", timestep: int = 1,
                 in_shape: Optional[Sequence[int]] = None):
        super().__init__()
        nir = _nir()
        if isinstance(graph, (str, Path)):
            path = Path(graph)
            if not path.is_file():
                raise FileNotFoundError(f"NIR graph {str(path)!r}: no such file")
            graph = nir.read(str(path))
        if not isinstance(graph, nir.NIRGraph):
            raise NirImportError(f"from_nir: expected a nir.NIRGraph or a path to a .nir file, got {type(graph).__name__}")
        meta = getattr(graph, "metadata", None) or {}
        if dt is None and "dt" in meta:
            dt = float(np.asarray(meta["dt"]))
        if dt is None:
            raise NirImportError("from_nir: dt is not given and the graph's metadata has no 'dt'; state the time "
                                 "step the graph was trained at (snnTorch's exporter assumes dt=1e-4)")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise NirImportError(f"from_nir: dt={dt!r}: expected a positive time step in seconds")
        nodes, edges = _inline(graph)
        for a, b in edges:
            for n in (a, b):
                if n not in nodes:
                    raise NirImportError(f"from_nir: edge ({a!r}, {b!r}) names node {n!r}, which is not in the graph")
        ins = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
        outs = [k for k, v in nodes.items() if isinstance(v, nir.Output)]
        if len(ins) != 1 or len(outs) != 1:
            raise NirImportError(f"from_nir: the graph has {len(ins)} Input nodes {ins} and {len(outs)} Output "
                                 f"nodes {outs}; a segmentable model needs exactly one of each")
        compute = [k for k in nodes if k not in (ins[0], outs[0])]
        if not compute:
            raise NirImportError("from_nir: the graph has no node between its Input and its Output")
        preds = {n: [a for a, b in edges if b == n] for n in nodes}
        if preds[ins[0]]:
            raise NirImportError(f"from_nir: Input node {ins[0]!r} has incoming edges {preds[ins[0]]}")
        for n in compute:
            if not preds[n]:
                raise NirImportError(f"from_nir: node {n!r} ({type(nodes[n]).__name__}) has no input edge")
        if not preds[outs[0]]:
            raise NirImportError(f"from_nir: Output node {outs[0]!r} has no input edge")
        order = _topo(compute, {n: [p for p in preds[n] if p != ins[0]] for n in compute})

        shape = in_shape if in_shape is not None else nodes[ins[0]].input_type.get("input")
        if shape is None:
            raise NirImportError(f"from_nir: Input node {ins[0]!r} has no shape; pass in_shape=(C, H, W)")
        shape = tuple(int(d) for d in np.atleast_1d(np.asarray(shape)))

        paths = _module_paths(order)
        for n in order:   # registered in topological order: the state_dict's order
            self._place(paths[n], _module_for(n, nodes[n], float(dt)))
        self.dt = float(dt)
        self.nir_input, self.nir_output = ins[0], outs[0]
        self.nir_names = {paths[n]: n for n in order}

        # cut after position i when exactly one earlier tensor is still needed later
        pos = {n: i for i, n in enumerate(order)}
        pos[ins[0]], pos[outs[0]] = -1, len(order)
        consumers = {n: [b for a, b in edges if a == n] for n in nodes}
        cuts = []
        for i in range(len(order) - 1):
            live = [p for p in [ins[0]] + order[:i + 1] if any(pos[c] > i for c in consumers[p])]
            if len(live) == 1:
                cuts.append((i, live[0]))
        self.nir_blocks: dict[tuple[str, ...], tuple[dict[str, list[str]], list[str]]] = {}
        start, entry = 0, ins[0]
        for i, carrier in cuts + [(len(order) - 1, None)]:
            names = order[start:i + 1]
            inside = set(names)
            for n in names:
                bad = [p for p in preds[n] if p != entry and p not in inside]
                if bad:  # cannot happen for a valid cut; guard the invariant
                    raise NirImportError(f"from_nir: internal cut error at node {n!r} (input {bad[0]!r})")
            bpreds = {paths[n]: [_BLOCK_IN if p == entry else paths[p] for p in preds[n]] for n in names}
            out_names = [carrier] if carrier is not None else preds[outs[0]]
            bouts = [_BLOCK_IN if p == entry else paths[p] for p in out_names]
            self.nir_blocks[tuple(paths[n] for n in names)] = (bpreds, bouts)
            start, entry = i + 1, carrier
        self._finish(list(self.nir_blocks), timestep, amode, shape)
        self.eval()

    def _place(self, path: str, mod: nn.Module) -> None:
        parent: nn.Module = self
        *groups, leaf = path.split(".")
        for g in groups:
            if g not in parent._modules:
                parent.add_module(g, NirGroup())
            parent = parent._modules[g]
        parent.add_module(leaf, mod)

    def _chain(self, paths: Sequence[str]) -> Chain:
        key = tuple(paths)
        if key not in self.nir_blocks:
            return super()._chain(paths)
        preds, outs = self.nir_blocks[key]
        return NirChain([(p, self.get_submodule(p)) for p in key], preds, outs, self.nir_names)

    def extra_repr(self) -> str:
        return f"dt={self.dt:g}, blocks={self.n_blocks}"


def from_nir(graph_or_path: Any, *, dt: Optional[float] = None, amode: str = "pick", timestep: int = 1,
             in_shape: Optional[Sequence[int]] = None) -> NirBackbone:
    """A segmentable model with explicit state from a NIR graph (a ``nir.NIRGraph`` or a ``.nir`` file).

    ``dt``: the time step of the discretisation (module docstring), in the graph's time unit; it
    defaults to ``graph.metadata['dt']`` (written by :func:`to_nir`) and is an error if neither is
    given. ``amode``/``timestep``: the temporal accumulator after the graph (``pick``: ``run`` returns
    the graph's per-step output; ``mean`` divides by ``timestep``). ``in_shape``: per-step input shape
    without the batch, when the Input node has none. ``model.run(x[T, B, ...], state)`` runs it;
    ``model.segment(s, e)`` cuts it (``model.n_blocks`` blocks). Modules and state are named by the
    NIR nodes (:class:`NirBackbone`).
    """
    return NirBackbone(graph_or_path, dt=dt, amode=amode, timestep=timestep, in_shape=in_shape)


# ------------------------------------------------------------------------------ to_nir

def _trace(fn, shape: Sequence[int]) -> tuple[int, ...]:
    """Per-sample output shape of the per-step op ``fn`` on a ``[1, *shape]`` input (no compute)."""
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
        y = fn(torch.zeros((1,) + tuple(shape)))
    return tuple(int(d) for d in y.shape[1:])


class _Exporter:
    """Walks a model and builds NIR nodes and edges; the current tensor is the sum of ``srcs``.
    Nodes are named by the module paths (``clif1.p0``, ``layer1.0.lif1.lif``, ``acc``)."""

    def __init__(self, dt: float):
        self.nir = _nir()
        self.dt = float(dt)
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: Any, srcs: Sequence[str]) -> str:
        base, k = name or "node", 1
        while name in self.nodes or not name:
            name, k = f"{base}_{k}", k + 1
        self.nodes[name] = node
        self.edges += [(s, name) for s in srcs]
        return name

    def refuse(self, mod: nn.Module, path: str, why: str) -> NoReturn:
        raise NirExportError(f"to_nir: {type(mod).__name__} at {path or '<model>'!r} cannot be expressed in NIR: {why}")

    # -- walking
    def emit(self, mod: nn.Module, srcs: list[str], shape: tuple[int, ...], path: str) -> tuple[list[str], tuple[int, ...]]:
        if isinstance(mod, (Backbone, Segment)):
            if isinstance(mod, Segment) and any(c.inner for c in mod.cuts):
                self.refuse(mod, path, f"split={list(mod.split)} cuts inside a residual block (its skip travels as a "
                                       "second tensor); NIR takes segments cut at block boundaries")
            units = mod.units() if isinstance(mod, Backbone) else list(mod.units.items())
            for name, unit in units:
                srcs, shape = self.emit_chain(unit, srcs, shape, path, name)
            return srcs, shape
        if isinstance(mod, Chain):
            return self.emit_chain(mod, srcs, shape, path, "")
        if isinstance(mod, TemporalAccumulator):
            return self.emit_acc(mod, srcs, shape, path)
        if isinstance(mod, _NirNeuron):
            return [self.add(path, mod.nir_node(self.dt), srcs)], shape
        if isinstance(mod, Lif):
            return [self.add(path, self.lif_node(mod, shape, path), srcs)], shape
        if isinstance(mod, LifPlus):
            self.refuse(mod, path, "the lifplus neuron (only BIDL's LIF maps to NIR)")
        if isinstance(mod, _OnCurrent):      # Lif1d / Lif2d: the cell on an existing current
            return self.emit(mod.lif, srcs, shape, _join(path, "lif"))
        if isinstance(mod, _Synapse):        # FcLif, Conv2dLif, ...: p0 -> pool -> norm -> cell
            known = [n for n in ("p0", "pool", "norm") if n in mod._modules]
            other = sorted(set(mod._modules) - set(known) - {mod.cell_name})
            if other:
                self.refuse(mod, path, f"submodules {other} this exporter does not know")
            for name in known:
                srcs, shape = self.emit(mod._modules[name], srcs, shape, _join(path, name))
            return self.emit(getattr(mod, mod.cell_name), srcs, shape, _join(path, mod.cell_name))
        if isinstance(mod, _Residual):       # cell(main(x) + downsample(x))
            main, mshape = srcs, shape
            for name in mod.main_order:
                main, mshape = self.emit(getattr(mod, name), main, mshape, _join(path, name))
            if mod.downsample is not None:
                down, dshape = self.emit(mod.downsample, srcs, shape, _join(path, "downsample"))
            else:
                down, dshape = list(srcs), shape
            if mshape != dshape:
                self.refuse(mod, path, f"residual branches of shapes {list(mshape)} and {list(dshape)}")
            return self.emit(getattr(mod, mod.last_lif), main + down, mshape, _join(path, mod.last_lif))
        if isinstance(mod, PerStep):
            return self.emit(mod.body, srcs, shape, path)
        if isinstance(mod, (TemporalSequential, nn.Sequential)):
            for name, child in mod.named_children():
                srcs, shape = self.emit(child, srcs, shape, _join(path, name))
            return srcs, shape
        if isinstance(mod, Temporal):
            self.refuse(mod, path, "a temporal module this exporter does not know")
        return self.leaf(mod, srcs, shape, path)

    def emit_chain(self, chain: Chain, srcs: list[str], shape: tuple[int, ...], path: str,
                   unit: str) -> tuple[list[str], tuple[int, ...]]:
        """A backbone's unit: its modules named by their paths in the backbone (``unit`` for a part
        without one, the accumulator)."""
        if isinstance(chain, NirChain):
            return self.emit_nir_chain(chain, srcs, shape)
        for p, part in zip(chain.paths, chain.parts):
            srcs, shape = self.emit(part, srcs, shape, _join(path, p if p is not None else unit))
        return srcs, shape

    def emit_nir_chain(self, chain: NirChain, srcs: list[str], shape: tuple[int, ...]) -> tuple[list[str], tuple[int, ...]]:
        """An imported NIR block: its nodes under their NIR names, edges as in the graph."""
        names: dict[str, list[str]] = {_BLOCK_IN: list(srcs)}
        shapes: dict[str, tuple[int, ...]] = {_BLOCK_IN: shape}
        for path, mod in zip(chain.paths, chain.parts):
            preds = chain.preds[path]
            ins = [s for p in preds for s in names[p]]
            names[path], shapes[path] = self.emit(mod, ins, shapes[preds[0]], chain.nir_names[path])
        return [s for p in chain.outs for s in names[p]], shapes[chain.outs[0]]

    def emit_acc(self, acc: TemporalAccumulator, srcs, shape, path):
        if acc.amode == "pick":
            return srcs, shape
        r = 1.0 / self.dt if acc.amode == "sum" else 1.0 / (acc.timestep * self.dt)
        return [self.add(path, self.nir.I(r=np.full(shape, r)), srcs)], shape

    def lif_node(self, mod: Lif, shape: tuple[int, ...], path: str):
        """BIDL's LIF cell as NIR LIF / IF (mapping in the module docstring)."""
        if mod.mode != "spike":
            self.refuse(mod, path, f"mode={mod.mode!r} outputs the membrane, NIR's LIF outputs spikes")
        if mod.norm is not None:
            self.refuse(mod, path, "BatchNorm on the membrane state (norm_state=True); build it with "
                                   "norm_state=False (BN on the current folds into the conv/linear)")

        def param(n: str) -> np.ndarray:
            v = getattr(mod, n).detach().cpu().double().numpy()
            if v.ndim:   # channel_share: [1, C, 1, 1] / [1, C]; the leading 1 is the batch
                v = v.reshape(v.shape[1:])
            return np.array(np.broadcast_to(v, shape), dtype=np.float64)

        alpha, beta, theta, v0 = (param(n) for n in ("alpha", "beta", "theta", "v_0"))
        if np.any(beta != 0):
            self.refuse(mod, path, f"beta={float(np.abs(beta).max()):g} != 0 (NIR's LIF would add the leak "
                                   "term at the first step as well, BIDL starts from V=0)")
        if np.any(alpha < 0) or np.any(alpha > 1):
            self.refuse(mod, path, f"alpha outside [0, 1] ({float(alpha.min()):g}..{float(alpha.max()):g})")
        if np.all(alpha == 1):
            return self.nir.IF(r=np.full(shape, 1.0 / self.dt), v_threshold=theta, v_reset=v0)
        if np.any(alpha == 1):
            self.refuse(mod, path, "alpha == 1 on some neurons only (IF and LIF in one layer)")
        tau = self.dt / (1.0 - alpha)
        return self.nir.LIF(tau=tau, r=tau / self.dt, v_leak=np.zeros(shape), v_threshold=theta, v_reset=v0)

    # -- stateless per-step modules
    def leaf(self, mod: nn.Module, srcs: list[str], shape: tuple[int, ...], path: str):
        nir = self.nir
        out_shape = lambda: _trace(mod, shape)  # noqa: E731
        if isinstance(mod, (nn.Identity, nn.Dropout)):
            return srcs, shape
        if isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                self.refuse(mod, path, f"padding_mode={mod.padding_mode!r}")
            pad = mod.padding if isinstance(mod.padding, str) else tuple(mod.padding)
            node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=_np32(mod.weight), stride=tuple(mod.stride),
                              padding=pad, dilation=tuple(mod.dilation), groups=mod.groups,
                              bias=_np32(mod.bias) if mod.bias is not None else np.zeros(mod.out_channels, np.float32))
            node.input_type = {"input": np.array(shape)}   # nir infers C_in = weight.shape[1], wrong for groups > 1
            return [self.add(path, node, srcs)], out_shape()
        if isinstance(mod, nn.Conv1d):
            if mod.padding_mode != "zeros":
                self.refuse(mod, path, f"padding_mode={mod.padding_mode!r}")
            pad = mod.padding if isinstance(mod.padding, str) else int(mod.padding[0])
            node = nir.Conv1d(input_shape=int(shape[1]), weight=_np32(mod.weight), stride=int(mod.stride[0]),
                              padding=pad, dilation=int(mod.dilation[0]), groups=mod.groups,
                              bias=_np32(mod.bias) if mod.bias is not None else np.zeros(mod.out_channels, np.float32))
            return [self.add(path, node, srcs)], out_shape()
        if isinstance(mod, nn.Linear):
            if len(shape) != 1:
                self.refuse(mod, path, f"a Linear on a per-step input of shape {list(shape)} (NIR's Affine takes 1-D)")
            node = (nir.Affine(weight=_np32(mod.weight), bias=_np32(mod.bias)) if mod.bias is not None
                    else nir.Linear(weight=_np32(mod.weight)))
            return [self.add(path, node, srcs)], (mod.out_features,)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return self.batchnorm(mod, srcs, shape, path)
        if isinstance(mod, InputNorm):   # ResNet's (x - mean) / std
            s = 1.0 / mod.std.detach().double().cpu().numpy().reshape(-1)
            return self.channel_affine(mod, s, -mod.mean.detach().double().cpu().numpy().reshape(-1) * s, srcs,
                                       shape, path)
        if isinstance(mod, nn.AvgPool2d):
            if mod.divisor_override is not None:
                self.refuse(mod, path, f"divisor_override={mod.divisor_override}")
            k, s, p = (_ints(v, 2) for v in (mod.kernel_size, mod.stride or mod.kernel_size, mod.padding))
            if p != (0, 0) and not mod.count_include_pad:
                self.refuse(mod, path, "count_include_pad=False with padding")
            got = out_shape()
            if mod.ceil_mode and got != _trace(nn.AvgPool2d(k, s, p), shape):
                self.refuse(mod, path, f"ceil_mode=True changes the output size for input {list(shape)} "
                                       "(NIR pools with floor rounding)")
            node = nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
            return [self.add(path, node, srcs)], got
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            hw = shape[1:]
            o = _ints([d if d is not None else hw[i] for i, d in enumerate(
                mod.output_size if isinstance(mod.output_size, (tuple, list)) else (mod.output_size,) * 2)], 2)
            if any(h % d for h, d in zip(hw, o)):
                self.refuse(mod, path, f"adaptive pooling of {list(hw)} to {list(o)} (windows of unequal size)")
            k = tuple(h // d for h, d in zip(hw, o))
            node = nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array((0, 0)))
            return [self.add(path, node, srcs)], (shape[0], *o)
        if isinstance(mod, nn.Flatten):
            if mod.start_dim == 0 or mod.end_dim == 0 or mod.start_dim < -len(shape):
                self.refuse(mod, path, "flattening the batch dimension")
            # per-sample dims: positive torch dims shift by one, negative ones index the same axes
            s = mod.start_dim - 1 if mod.start_dim > 0 else mod.start_dim
            e = mod.end_dim - 1 if mod.end_dim > 0 else mod.end_dim
            node = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=s, end_dim=e)
            return [self.add(path, node, srcs)], out_shape()
        if isinstance(mod, NirScale):
            return [self.add(path, nir.Scale(scale=_np32(mod.scale)), srcs)], shape
        if isinstance(mod, NirThreshold):
            return [self.add(path, nir.Threshold(threshold=_np32(mod.threshold)), srcs)], shape
        if isinstance(mod, NirSumPool2d):
            node = nir.SumPool2d(kernel_size=np.array(mod.kernel_size), stride=np.array(mod.stride),
                                 padding=np.array(mod.padding))
            return [self.add(path, node, srcs)], out_shape()
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)):
            self.refuse(mod, path, "max pooling (NIR has no max pooling; build the model with average pooling)")
        if isinstance(mod, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.ELU, nn.SiLU, nn.Softmax)):
            self.refuse(mod, path, "an activation function (NIR has neurons, not activations)")
        self.refuse(mod, path, "no NIR node for this module")

    def batchnorm(self, bn: nn.Module, srcs: list[str], shape: tuple[int, ...], path: str):
        """Eval-mode BatchNorm: ``s x + t`` per channel, ``s = gamma / sqrt(var + eps)``, ``t = beta - mean s``."""
        if not bn.track_running_stats or bn.running_mean is None:
            self.refuse(bn, path, "BatchNorm without running statistics (it normalises with batch statistics)")
        var = bn.running_var.detach().double().cpu().numpy()
        mean = bn.running_mean.detach().double().cpu().numpy()
        gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(var)
        shift = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros_like(var)
        s = gamma / np.sqrt(var + bn.eps)
        return self.channel_affine(bn, s, shift - mean * s, srcs, shape, path)

    def channel_affine(self, mod: nn.Module, s: np.ndarray, t: np.ndarray, srcs: list[str], shape: tuple[int, ...],
                       path: str):
        """``y = s x + t`` per channel: folded into the Conv/Linear just emitted (``W' = W s``,
        ``b' = b s + t``), else a dense 1x1 Conv2d with a diagonal weight (2-D) or a diagonal Affine (1-D)."""
        nir = self.nir
        prev = self.nodes.get(srcs[0]) if len(srcs) == 1 else None
        unused = len(srcs) == 1 and not any(a == srcs[0] for a, _ in self.edges)
        if unused and isinstance(prev, (nir.Conv2d, nir.Conv1d, nir.Affine, nir.Linear)):
            w = _arr(prev.weight)
            b = _arr(prev.bias) if not isinstance(prev, nir.Linear) else np.zeros(w.shape[0])
            w = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            b = (b * s + t).astype(np.float32)
            if isinstance(prev, (nir.Conv2d, nir.Conv1d)):
                prev.weight, prev.bias = w, b
            else:
                self.nodes[srcs[0]] = nir.Affine(weight=w, bias=b)
            return srcs, shape
        b = t.astype(np.float32)
        if len(shape) == 3:   # a dense 1x1 conv with a diagonal weight (nir's type check mishandles groups)
            w = np.diag(s).reshape(len(s), len(s), 1, 1).astype(np.float32)
            node = nir.Conv2d(input_shape=tuple(shape[1:]), weight=w, stride=1, padding=0, dilation=1, groups=1,
                              bias=b)
            return [self.add(path, node, srcs)], shape
        if len(shape) == 1:
            return [self.add(path, nir.Affine(weight=np.diag(s).astype(np.float32), bias=b), srcs)], shape
        self.refuse(mod, path, f"a per-channel scale on a per-step input of shape {list(shape)} with no "
                               "Conv/Linear before it")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _np32(t: Tensor) -> np.ndarray:
    return t.detach().cpu().float().numpy().copy()


def _model_in_shape(model: nn.Module) -> Optional[tuple[int, ...]]:
    try:
        if isinstance(model, Backbone):
            return tuple(model.default_input_shape())
        if hasattr(model, "input_shape") and callable(model.input_shape):   # a Segment
            return tuple(model.input_shape())
    except ValueError:
        return None
    return None


def to_nir(model: nn.Module, *, dt: float, in_shape: Optional[Sequence[int]] = None, check: bool = True,
           check_steps: int = 3, tol: float = 1e-5):
    """The NIR graph of ``model`` (a backbone, a segment, a layer stack or a :class:`NirBackbone`).

    ``dt``: the time step the exported time constants refer to (mapping in the module docstring;
    ``graph.metadata['dt']`` records it). ``in_shape``: per-step input shape without the batch
    (default: the model's). Modules NIR cannot express raise :class:`NirExportError` naming the
    module and its path. With ``check``, the graph is imported back with :func:`from_nir` and run
    against ``model`` on ``check_steps`` steps of seeded random spikes: a max |diff| above ``tol``
    raises NirExportError (folding BatchNorm rounds differently; a spike exactly at the threshold
    could flip -- pass ``check=False`` to skip).
    """
    nir = _nir()
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"to_nir: dt={dt!r}: expected a positive time step")
    shape = tuple(int(d) for d in in_shape) if in_shape is not None else _model_in_shape(model)
    if shape is None:
        raise ValueError(f"to_nir: the per-step input shape of {type(model).__name__} is not known; pass in_shape")
    was = model.training
    model.eval()
    try:
        ex = _Exporter(dt)
        in_name = getattr(model, "nir_input", "input")
        out_name = getattr(model, "nir_output", "output")
        ex.nodes[in_name] = nir.Input(input_type=np.array(shape))
        srcs, out_shape = ex.emit(model, [in_name], shape, "")
        if srcs == [in_name]:
            raise NirExportError(f"to_nir: {type(model).__name__} has no NIR-expressible computation")
        out_name = ex.add(out_name, nir.Output(output_type=np.array(out_shape)), srcs)
        graph = nir.NIRGraph(nodes=ex.nodes, edges=ex.edges, metadata={"dt": float(dt), "source": "bidl-grid"})
        if check:
            diff = _check(model, graph, dt, shape, check_steps)
            if diff > tol:
                raise NirExportError(f"to_nir: the NIR graph of {type(model).__name__} differs from the model by "
                                     f"max |diff| {diff:.3g} > tol {tol:g} on seeded spikes (check=False skips this)")
    finally:
        model.train(was)
    return graph


@torch.no_grad()
def _check(model: nn.Module, graph: Any, dt: float, shape: tuple[int, ...], steps: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand((steps, 2) + shape, generator=g) < 0.5).float()
    ref = model.run(x)[0]
    got = from_nir(graph, dt=dt, in_shape=shape).run(x)[0]
    if got.shape != ref.shape:
        raise NirExportError(f"to_nir: the NIR graph gives outputs of shape {list(got.shape)}, the model "
                             f"{list(ref.shape)}")
    return float((got - ref).abs().max()) if ref.numel() else 0.0
