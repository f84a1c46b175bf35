"""The emulated backend's counterpart of ``compile``: per (segment, chunk length) the model's real
chunk signature and a pace taken from a device profile, no program to run.

    programs = emulate(spec, slices=[24, 24], profile=DeviceProfile(ref_fps=28.8))
    plan = place(programs, cluster, layout)        # exactly as with compiled artifacts

A segment of ``f`` FLOPs per step is paced at ``f / ref_flops / ref_fps`` seconds per step (its
FLOPs between its cut positions, :class:`~bidl_models.segments.CostProfile`; ``ref_flops``: the
profile's, else ResNetLif50 on 2x128x128), so the real 12.55 MB ResNetLif50 state and the real
activations (with the skip tensor across a cut inside a block) move through the real channels at the
published chip's speed. With ``profile=None`` the pace is 0 (shapes only: ``bidl-plan``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from bidl_models.backbones import build_backbone
from bidl_models.model_spec import ModelSpec
from bidl_models.segments import block_costs, cost_profile
from bidl_models.specs import Signature, TensorSpec
from compile.program import Program, ProgramKey

from bidl_runtime.runtime_config import DeviceProfile

_RESNET50_FLOPS: list[float] = []


def resnet50_step_flops() -> float:
    """FLOPs of one ResNetLif50 time step on 2x128x128 (counted on fake tensors, cached): the
    reference model of :class:`DeviceProfile`."""
    if not _RESNET50_FLOPS:
        net = build_backbone(dict(type="ResNetLifItout", depth=50, nclass=10, input_channels=2, timestep=1))
        _RESNET50_FLOPS.append(sum(block_costs(net, (2, 128, 128))))
    return _RESNET50_FLOPS[0]


@dataclass(frozen=True)
class EmulatedSet:
    """What :func:`emulate` produces: a :class:`~compile.program.Program` without a path per
    (segment, chunk length) (the :class:`~compile.program.ProgramSet` protocol)."""

    net: str
    T: int
    slices: tuple[int, ...]
    splits: tuple[tuple[int | str, int | str], ...]   # block indices or cuts inside blocks
    split_source: str
    batch: int
    sources: dict[ProgramKey, Program]

    def programs(self) -> dict[ProgramKey, Program]:
        return dict(self.sources)


def emulate(spec: ModelSpec, slices: Sequence[int], profile: Optional[DeviceProfile] = None,
            batch: int = 1) -> EmulatedSet:
    """Real chunk signatures of every (segment, chunk length) of ``spec`` and their pace."""
    slices = tuple(int(t) for t in slices)
    if sum(slices) != spec.T:
        raise ValueError(f"slices={list(slices)}: expected time-slice lengths summing to T={spec.T}")
    spec.check_slices(slices)
    costs = cost_profile(spec.segments[0].backbone, spec.in_shape) if profile is not None else None
    ref = (profile.ref_flops if profile.ref_flops is not None else resnet50_step_flops()) if profile else 0.0
    sources: dict[ProgramKey, Program] = {}
    for s, io in enumerate(spec.io_specs(batch)):   # the modules only for a pace (a recorded spec: built then)
        step_s = profile.seconds_per_step(costs.span(*spec.segments[s].cuts), ref) if costs is not None else 0.0
        for t in sorted(set(slices)):
            sig = io.chunk(t)
            if s == 0:
                sig = Signature(TensorSpec("x", sig.input.shape, spec.input_dtype), sig.output, sig.state,
                                sig.carry_in, sig.carry_out)
            sources[(s, t)] = Program(sig, None, seconds_per_step=step_s)
    return EmulatedSet(spec.name, spec.T, slices, spec.splits, spec.split_source, batch, sources)
