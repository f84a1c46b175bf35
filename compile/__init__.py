"""Compile model segments into deployable artifacts (program + manifest with the state ABI).

Public API (stable; the runtime uses nothing else)::

    from compile import compile_config, load_artifact, zero_state, ArtifactError

    cm = compile_config("resnetlif50-itout-b8x1-cifar10dvs_mp", checkpoint=None, grid="3x2")
    art = cm.load(segment=0, chunk_len=cm.row_chunks[0])   # or load_artifact(cm.cell(row, segment))
    y, state = art.run(x_chunk, zero_state(art, batch=1))

- :func:`compile_config` (``compile.build``): config -> artifacts for every (segment, chunk
  length) of the grid, cached by content hashes, verified against the eager model;
  returns a :class:`CompiledModel` (paths, grid chunking, summary table).
- :func:`load_artifact` / :class:`Artifact` / :func:`zero_state` (``compile.artifact``): load and
  check one artifact directory; call it flat (``art(x, *state)``) or named (``art.run(x, state)``).
- :class:`ArtifactError` (a ValueError): a missing, corrupt, stale, mismatched or incompatible
  artifact; :class:`VerificationError`: an artifact that disagrees with the eager model.

Command line: ``python -m compile --config CFG [--checkpoint CKPT] [--grid RxC] [--out DIR]
[--force] [--aot] [--batch B]`` (``python -m compile -h`` lists all options).
"""
from .artifact import Artifact, ArtifactError, load_artifact, read_manifest, zero_state
from .build import ArtifactRecord, CompiledModel, VerificationError, compile_config

__all__ = ["Artifact", "ArtifactError", "ArtifactRecord", "CompiledModel", "VerificationError",
           "compile_config", "load_artifact", "read_manifest", "zero_state"]
