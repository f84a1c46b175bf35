"""Compile model segments into deployable artifacts (program + manifest with the state ABI).

Public API (the runtime uses nothing else)::

    from bidl_models.model_spec import ModelSpec
    from compile import CompileOptions, compile_spec, load_artifact

    spec = ModelSpec.from_config(load_config("resnetlif50-itout-b8x1-cifar10dvs_mp"))
    arts = compile_spec(spec, slices=[4, 3, 3], options=CompileOptions(out="artifacts"))
    art = arts.load(segment=0, chunk_len=4)            # or load_artifact(arts.cell(row, segment))
    y, state = art.run(x_chunk, art.fresh_state(batch=1))

    arts = compile_config("resnetlif50-itout-b8x1-cifar10dvs_mp", grid="3x2")   # the same from a name

- :func:`compile_spec` (``compile.build``): ModelSpec + time-slice lengths -> artifacts for every
  (segment, chunk length), cached by content hashes, verified against the eager model; returns an
  :class:`ArtifactSet` (records with paths and manifests, grid chunking, summary table).
  :func:`compile_config` is the convenience from a config name (keyword options).
- :class:`CompileOptions` (``compile.options``): every knob of a compile, ``to_dict``/``from_dict``.
- :class:`Manifest` (``compile.manifest``): the artifact manifest, ``to_dict``/``from_dict``.
- :func:`load_artifact` / :class:`Artifact` / :meth:`Artifact.fresh_state` (``compile.artifact``): load and
  check one artifact directory; call it flat (``art(x, *state)``) or named (``art.run(x, state)``).
- :class:`ArtifactError` (a ValueError): a missing, corrupt, stale, mismatched or incompatible
  artifact; :class:`VerificationError`: an artifact that disagrees with the eager model.

Command line: ``python -m compile --config CFG [--checkpoint CKPT] [--grid RxC] [--out DIR]
[--force] [--aot] [--batch B]`` (``python -m compile -h`` lists all options).
"""
from importlib import import_module
from typing import Any

from bidl_grid.versions import check_torch as _check_torch

_check_torch()   # one-line ImportError on a torch older than bidl-grid supports (read from metadata)

# loaded on first use (PEP 562): ``compile.program`` (pure data, read by the planner) imports no torch
_EXPORTS = {
    "Artifact": "artifact", "load_artifact": "artifact",
    "ArtifactRecord": "build", "ArtifactSet": "build", "CompiledModel": "build", "compile_config": "job", "CompileJob": "job",
    "compile_spec": "build",
    "ArtifactError": "errors", "VerificationError": "errors",
    "Manifest": "manifest", "read_manifest": "manifest",
    "CompileOptions": "options",
    "Program": "program", "ProgramSet": "program",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
