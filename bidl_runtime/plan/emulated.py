"""The emulated backend's counterpart of ``compile``: per (segment, chunk length) the real tensor
specs of the model and a pace taken from a device profile, no program.

    arts = emulate(spec, slices=[24, 24], profile=DeviceProfile(ref_fps=28.8))
    plan = place(arts, cluster, layout)        # exactly as with compiled artifacts

A segment of ``f`` FLOPs per step is paced at ``f / ref_flops / ref_fps`` seconds per step (its
FLOPs between its cut positions, :class:`~bidl_models.segments.CostProfile`), so the real 12.55 MB
ResNetLif50 state and the real activations (with the skip tensor across a cut inside a block) move
through the real channels at the published chip's speed. With ``profile=None`` the pace is 0 (shapes only: the plan CLI).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from bidl_models.model_spec import ModelSpec
from bidl_models.segments import cost_profile
from bidl_models.specs import TensorSpec

from bidl_runtime.cell.contexts import DeviceProfile, EmulatedSource


def chunk_spec(name: str, per_step: TensorSpec, t: int) -> TensorSpec:
    """``[B, ...]`` per step -> ``[t, B, ...]`` per chunk."""
    return TensorSpec(name, (t,) + tuple(per_step.shape), per_step.dtype)


@dataclass(frozen=True)
class EmulatedSet:
    """What :func:`emulate` produces: an :class:`EmulatedSource` per (segment, chunk length)."""

    net: str
    T: int
    slices: tuple[int, ...]
    splits: tuple[tuple[int | str, int | str], ...]   # block indices or cuts inside blocks
    split_source: str
    batch: int
    sources: dict[tuple[int, int], EmulatedSource]


def emulate(spec: ModelSpec, slices: Sequence[int], profile: Optional[DeviceProfile] = None,
            batch: int = 1) -> EmulatedSet:
    """Real chunk/state specs of every (segment, chunk length) of ``spec`` and their pace."""
    slices = tuple(int(t) for t in slices)
    if sum(slices) != spec.T:
        raise ValueError(f"slices={list(slices)}: expected time-slice lengths summing to T={spec.T}")
    spec.check_slices(slices)
    costs = cost_profile(spec.segments[0].backbone, spec.in_shape) if profile is not None else None
    sources: dict[tuple[int, int], EmulatedSource] = {}
    for s, (seg, io) in enumerate(zip(spec.segments, spec.io_specs(batch))):
        x_dtype = spec.input_dtype if s == 0 else io.input.dtype
        step_s = profile.seconds_per_step(costs.span(*seg.cuts)) if costs is not None else 0.0
        for t in sorted(set(slices)):
            x = TensorSpec("x", (t,) + tuple(io.input.shape), x_dtype)
            sources[(s, t)] = EmulatedSource(x, chunk_spec("y", io.output, t), io.state, step_s,
                                             tuple(chunk_spec(c.name, c, t) for c in io.carry_in),
                                             tuple(chunk_spec(c.name, c, t) for c in io.carry_out))
    return EmulatedSet(spec.name, spec.T, slices, spec.splits, spec.split_source, batch, sources)
