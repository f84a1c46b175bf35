"""What every backbone is: BIDL-named modules, cut into ``stem -> blocks[0..N) -> head -> accumulator``.

A backbone registers its modules under BIDL's names (``clif1``, ``head``, ``layer2``, ...), so its
``state_dict()`` is BIDL's. Its *layout* lists, by dotted path, which of those modules make the stem,
each block and the head: the flat block list is what ``split=[s, e]`` indexes; the segment with
``s == 0`` also holds the stem, the one with ``e == N`` also holds the head and the accumulator.
State tensors are named by the module that holds them (``clif1.lif.v``, ``layer2.1.lif1.lif.v``),
as BIDL's attributes are. The accumulator is state too (``tempAdd``, BIDL's chip accumulator)::

    mean: acc_t = acc_{t-1} + y_t / timestep     sum: acc_t = acc_{t-1} + y_t     pick: acc_t = y_t

so the model's result is the accumulator after the last step, wherever the time axis was cut.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..cuts import BlockPart, Cut
from ..layers import (
    LIFPLUS_FORMS, Chain, Conv2dLif, Conv2dLifPlus, FcLif, FcLifPlus, Temporal, set_bn_stats, soma_for,
)
from ..specs import State
from ..temporal_layers import AGG_MODES, Aggregation
from ..segments import Segment

AMODES = AGG_MODES
log = logging.getLogger("bidl_models.backbones")

#: Config-key spellings of the user guide's dialect, mapped to the public repository's.
KEY_ALIASES = {"c0": "input_channels", "h0": "h", "w0": "w"}


class TemporalAccumulator(Aggregation):
    """The backbones' temporal head: an :class:`~bidl_models.temporal_layers.Aggregation` whose state
    is ``tempAdd`` (BIDL's chip accumulator); outputs the aggregate after every step."""

    state_name = "tempAdd"

    def __init__(self, amode: str = "mean", timestep: int = 1):
        if amode not in AMODES:
            raise ValueError(f"amode={amode!r}: expected one of {list(AMODES)}")
        if int(timestep) < 1:
            raise ValueError(f"timestep={timestep!r}: expected a positive int")
        super().__init__(amode, 1, -1, int(timestep))

    @property
    def amode(self) -> str:
        return self.mode

    def extra_repr(self) -> str:
        return f"amode={self.amode}, timestep={self.timestep}"


@contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Deterministic weight initialisation inside the block (CPU RNG forked, then restored)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@dataclass(frozen=True)
class NeuronSpec:
    """The neuron options every spiking layer of a backbone shares; builds those layers.

    ``neuron`` 'lif' | 'lifplus' (with ``neuron_config``, ``lifplus_form`` 'bidl' | 'documented');
    ``mode`` 'spike' | 'analog'; ``norm_state`` True: BN on the membrane state (BIDL's default),
    False: BN on the current; ``bias``: conv/linear biases (BIDL: True).
    """

    mode: str = "spike"
    soma_params: Any = "all_share"
    noise: float = 0.0
    neuron: str = "lif"
    neuron_config: Optional[Sequence] = None
    norm_state: bool = True
    bias: bool = True
    surrogate_width: float = 1.0
    lifplus_form: str = "documented"

    def __post_init__(self) -> None:
        neuron = str(self.neuron).lower()
        object.__setattr__(self, "neuron", neuron)
        if neuron not in ("lif", "lifplus"):
            raise ValueError(f"neuron={self.neuron!r}: expected 'lif' or 'lifplus'")
        if neuron == "lif" and self.neuron_config is not None:
            raise ValueError(f"neuron_config={self.neuron_config!r} is only used with neuron='lifplus'; "
                             "expected None for neuron='lif'")
        if self.mode not in ("spike", "analog"):
            raise ValueError(f"cmode/fmode={self.mode!r}: expected 'spike' or 'analog'")
        if self.lifplus_form not in LIFPLUS_FORMS:
            raise ValueError(f"lifplus_form={self.lifplus_form!r}: expected one of {list(LIFPLUS_FORMS)}")

    def with_mode(self, mode: str) -> "NeuronSpec":
        return NeuronSpec(**{**self.__dict__, "mode": mode})

    def _kw(self) -> dict:
        kw = dict(norm_state=self.norm_state, mode=self.mode, soma_params=self.soma_params, noise=float(self.noise),
                  bias=self.bias, surrogate_width=self.surrogate_width)
        if self.neuron == "lifplus":
            kw.update(neuron_config=self.neuron_config, lifplus_form=self.lifplus_form)
        return kw

    def conv(self, ci: int, co: int, k: int, stride: int = 1, padding: int = 0, mp: bool = False) -> Temporal:
        """``Conv2dLif`` (or ``Conv2dLifPlus``) with these options."""
        cls = Conv2dLifPlus if self.neuron == "lifplus" else Conv2dLif
        return cls(ci, co, k, stride, padding, mp=mp, **self._kw())

    def fc(self, ci: int, co: int) -> Temporal:
        """``FcLif`` (or ``FcLifPlus``) with these options."""
        cls = FcLifPlus if self.neuron == "lifplus" else FcLif
        return cls(ci, co, **self._kw())

    def soma(self, channels: int, norm_state: bool = False) -> Temporal:
        """A neuron on an existing current ``[B, C, H, W]`` (``Lif2d`` / ``LifPlus2d``)."""
        kw = dict(norm_state=norm_state, mode=self.mode, soma_params=self.soma_params, noise=float(self.noise),
                  surrogate_width=self.surrogate_width)
        if self.neuron == "lifplus":
            kw.update(neuron_config=self.neuron_config, form=self.lifplus_form)
        return soma_for(self.neuron, 2)(channels, **kw)


def check_itout(spike_func: Any, use_inner_loop: bool, where: str) -> None:
    """BIDL's ``spike_func`` / ``use_inner_loop`` keywords: only their defaults are supported here."""
    if spike_func is not None:
        raise ValueError(f"{where}: spike_func={spike_func!r}: expected None (BIDL's Lif ignores it too; the "
                         "surrogate is the rectangle of width surrogate_width)")
    if use_inner_loop:
        raise ValueError(f"{where}: use_inner_loop=True (BIDL's It mode) is not supported by this backbone; "
                         "expected False (every backbone here runs both ways: step() or run() over a chunk)")


class Backbone(nn.Module):
    """Base of all backbones. Subclasses register their modules, then call ``_finish`` with the layout.

    ``run(x[T, B, ...], state)`` -> (accumulator after each step ``[T, B, nclass]``, state);
    ``forward(x[B, T, ...])`` -> logits ``[B, nclass]`` (BIDL's batch-first layout, fresh state).

    What the model reads per step: ``input_shape`` (``(C, H, W)``; ``()`` for one token id per step;
    None when the config does not fix it), ``input_dtype`` (``'float32'``, or ``'int64'`` for token
    ids), ``input_high`` (integer inputs lie in ``[0, input_high)``: the vocabulary size).
    """

    input_dtype: str = "float32"
    input_high: Optional[int] = None
    #: How a training-mode BatchNorm on a per-step tensor takes its statistics when the config gives no
    #: ``bn_stats`` (:data:`~bidl_models.layers.BN_STATS`): per step in BIDL's itout models, over all
    #: frames in its It models (``TimeDistributed``).
    default_bn_stats: str = "step"
    #: What a temporal mean divides by for an input of T != ``timestep`` steps: ``'timestep'`` (BIDL's
    #: itout models sum the steps given and divide by ``timestep``) or ``'given'`` (its It models
    #: average over the steps given).
    short_mean: str = "timestep"

    def _finish(self, blocks: Sequence[Sequence[str]], timestep: int, amode: str,
                input_shape: Optional[Sequence[int]], stem: Sequence[str] = (), head: Sequence[str] = (),
                bn_stats: Optional[str] = None) -> None:
        """``blocks``: the module paths of every block, in order; ``stem`` / ``head``: those that go
        with the first / last block; ``bn_stats``: the config's key (None: :attr:`default_bn_stats`)."""
        self.bn_stats = self.default_bn_stats if bn_stats is None else bn_stats
        set_bn_stats(self, self.bn_stats, f"{type(self).__name__}: bn_stats")
        self.timestep = int(timestep)
        self.acc = TemporalAccumulator(amode, timestep)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
        self.layout = (tuple(stem), tuple(tuple(b) for b in blocks), tuple(head))
        for path in (*stem, *(p for b in blocks for p in b), *head):
            self.get_submodule(path)  # a layout naming a missing module is a bug: fail at construction

    @property
    def n_blocks(self) -> int:
        return len(self.layout[1])

    def _chain(self, paths: Sequence[str]) -> Chain:
        return Chain([(p, self.get_submodule(p)) for p in paths])

    def block(self, i: int) -> Chain:
        """Block ``i`` as a runnable unit (shares this backbone's modules)."""
        return self._chain(self.layout[1][i])

    def span_block(self, i: int) -> Optional[nn.Module]:
        """The module of block ``i`` if a cut may go inside it (a block of one module with ``run_span``,
        e.g. a residual block; see :mod:`bidl_models.cuts`), else None."""
        paths = self.layout[1][i]
        mod = self.get_submodule(paths[0]) if len(paths) == 1 else None
        return mod if hasattr(mod, "run_span") else None

    def units(self, start: int | str | Cut = 0, end: int | str | Cut | None = None) -> list[tuple[str, Temporal]]:
        """(unit name, module) of the units a segment ``[start, end)`` runs, in order; a cut inside a
        block gives a :class:`~bidl_models.cuts.BlockPart` of it."""
        s, e = Cut.parse(start), Cut.parse(self.n_blocks if end is None else end)
        stem, blocks, head = self.layout
        out: list[tuple[str, Temporal]] = []
        if s == Cut(0) and stem:
            out.append(("stem", self._chain(stem)))
        first = s.block
        if s.inner:
            inside = e.block == s.block
            out.append((f"block{s.block}", BlockPart(blocks[s.block][0], self.span_block(s.block), s.span,
                                                     e.span if inside else None)))
            if inside:
                return out
            first += 1
        out += [(f"block{i}", self._chain(blocks[i])) for i in range(first, e.block)]
        if e.inner:
            out.append((f"block{e.block}", BlockPart(blocks[e.block][0], self.span_block(e.block), (0, 0), e.span)))
        elif e.block == self.n_blocks:
            if head:
                out.append(("head", self._chain(head)))
            out.append(("acc", Chain([(None, self.acc)])))
        return out

    def segment(self, start: int | str | Cut, end: int | str | Cut):
        """The contiguous segment ``[start, end)`` (block indices, or cut positions inside blocks, see
        :mod:`bidl_models.cuts`); shares this backbone's weights."""
        return Segment(self, start, end)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        return self.segment(0, self.n_blocks).run(x, state)

    def whole_sequence_layers(self, start: int | str | Cut = 0,
                              end: int | str | Cut | None = None) -> list[tuple[str, str]]:
        """``(module path, class name)`` of the layers in ``[start, end)`` (block indices or cuts; with
        the stem / head where the range holds them) that need all T steps in one chunk (``whole_sequence``)."""
        out: list[tuple[str, str]] = []
        for _, unit in self.units(start, end):
            parts = (zip(unit.paths, unit.parts) if hasattr(unit, "paths")
                     else [(unit.path, unit.block)])   # a piece of a block cut inside: its whole block
            for path, part in parts:
                for sub, m in part.named_modules():
                    if getattr(m, "whole_sequence", False):
                        name = ".".join(p for p in (path, sub) if p) or type(m).__name__
                        out.append((name, type(m).__name__))
        return out

    def needs_exact_timestep(self) -> bool:
        """True when the result is only right for exactly ``timestep`` steps: a temporal mean divides
        by it, or a layer attends over the whole sequence."""
        return any(getattr(m, "divides_by_timestep", False) or getattr(m, "whole_sequence", False)
                   for m in self.modules())

    def check_input(self, x: Tensor) -> None:
        """ValueError unless ``x`` is ``[B, T] + input_shape`` (``[B, T, ...]`` when that is not fixed)."""
        rank = 2 + len(self.input_shape) if self.input_shape is not None else None
        if (x.dim() != rank) if rank is not None else x.dim() < 3:
            step = f"[{', '.join(map(str, self.input_shape))}]" if self.input_shape is not None else "[...]"
            raise ValueError(f"input of shape {list(x.shape)}: expected [B, T] + {step} per step")

    def forward(self, x: Tensor) -> Tensor:
        """``x[B, T, ...]`` -> logits ``[B, nclass]``: the accumulator after the last step.

        T may differ from ``timestep`` (one warning line per model and T), as in BIDL: the temporal
        mean is then the sum over the T steps divided by ``timestep`` (itout models; ResNets average
        their features so, then ``fc``) or the mean over the T steps (It models, :attr:`short_mean`).
        Attention over time needs exactly ``timestep`` steps: ValueError.
        """
        self.check_input(x)
        steps = int(x.shape[1])
        if steps != self.timestep and self.needs_exact_timestep():
            whole = self.whole_sequence_layers()
            if whole:
                raise ValueError(f"input has T={steps} time steps but the backbone was built with timestep="
                                 f"{self.timestep}; {whole[0][0]} ({whole[0][1]}) attends over exactly that many")
            self._warn_steps(steps)
        with self._mean_over(steps):
            y, _ = self.run(x.transpose(0, 1))
        return self.steps_result(y[-1], steps)

    def _warn_steps(self, steps: int) -> None:
        """One log line per model and T: what a T != ``timestep`` input gives."""
        warned = self.__dict__.setdefault("_warned_steps", set())
        if steps in warned:
            return
        warned.add(steps)
        how = (f"the temporal mean is taken over the {steps} steps given" if self.short_mean == "given" else
               f"the temporal mean is the sum over the {steps} steps divided by timestep={self.timestep}")
        log.warning("%s: input has T=%d time steps but model.backbone.timestep=%d: %s, as BIDL's %s",
                    type(self).__name__, steps, self.timestep, how, type(self).__name__)

    @contextmanager
    def _mean_over(self, steps: int) -> Iterator[None]:
        """For :attr:`short_mean` ``'given'``: every temporal mean divides by ``steps`` inside the block."""
        means = [m for m in self.modules() if isinstance(m, Aggregation) and m.mode == "mean"]
        if self.short_mean != "given" or steps == self.timestep or not means:
            yield
            return
        saved = [m.timestep for m in means]
        try:
            for m in means:
                m.timestep = steps
            yield
        finally:
            for m, ts in zip(means, saved):
                m.timestep = ts

    def steps_result(self, y: Tensor, steps: int) -> Tensor:
        """The model's result from the accumulator after ``steps`` steps (a hook: ResNets correct the
        ``fc`` bias for T != ``timestep``)."""
        return y

    def features(self, paths: Sequence[str], in_shape: Sequence[int]) -> int:
        """Features per sample after running the modules ``paths`` on a per-step input ``in_shape``."""
        try:
            out, _ = self._chain(paths).trace_shapes((1,) + tuple(in_shape))
        except RuntimeError as e:
            raise ValueError(f"input shape input_channels, h, w = {list(in_shape)} is too small for "
                             f"{type(self).__name__}'s convolutions and poolings ({str(e).splitlines()[0]})") from None
        n = 1
        for d in out.shape[1:]:
            n *= d
        return n

    def default_input_shape(self) -> tuple[int, ...]:
        """Per-sample, per-step input shape ``(C, H, W)``; ValueError if the config does not fix it."""
        if self.input_shape is None:
            raise ValueError(f"{type(self).__name__}: the input size is not known from its config; "
                             "pass in_shape (e.g. from models_compile_inputshape or the dataset)")
        return self.input_shape
