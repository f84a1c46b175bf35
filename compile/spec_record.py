"""The resolved model spec, recorded beside the artifacts: a run that finds its artifacts cached
builds no model to find them (building one traces its shapes: 1-3 s of CPU, most of it importing
torch's compiler stack for the shape tracer).

    spec, read = recorded_spec(root, cfg, dict(columns=2, checkpoint=ckpt))   # read back, or resolved
    write_record(record_path(root, cfg, dict(columns=2, checkpoint=ckpt)), spec)   # once compiled

A record, ``<root>/specs/<key>.json``, is :meth:`ModelSpec.to_dict` under a key of everything the
spec depends on: the config's model keys and the files they name (``model_sha256``), the checkpoint
file's content (sha256), the arguments of :meth:`ModelSpec.from_config`, torch's version and the
source of ``bidl_models`` (a code change that could move a split or a shape is a new key). It is
sealed as manifests are (HMAC-SHA256 with this user's artifact key, :mod:`compile.seal`): an edited,
foreign or unreadable record is not used (and is rewritten). A spec read back builds its model only
when its segments are read (a compile that is not cached, the emulated backend's pace) and checks
then that the model built is the one recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

import bidl_models
from bidl_models.checkpoint import file_sha256
from bidl_models.config import Config
from bidl_models.model_spec import ModelSpec, model_sha256

from .errors import ArtifactError
from .seal import check_seal, seal_manifest

KIND = "bidl-model-spec"
FORMAT_VERSION = 1
SPECS_DIR = "specs"


@lru_cache(maxsize=None)
def code_sha256() -> str:
    """sha256 of ``bidl_models``'s Python source (its shipped configs aside: the model keys of a config
    are hashed on their own), read once per process."""
    root = Path(bidl_models.__file__).parent
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*.py") if "configs" not in p.relative_to(root).parts):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def spec_key(cfg: Config, args: Mapping[str, Any]) -> str:
    """The record's key: what :meth:`ModelSpec.from_config` of ``cfg`` with ``args`` depends on."""
    args = dict(args)
    checkpoint = args.pop("checkpoint", None)
    weights = file_sha256(checkpoint) if checkpoint is not None else None
    text = json.dumps({"kind": KIND, "format": FORMAT_VERSION, "name": cfg.name, "model": model_sha256(cfg),
                       "checkpoint": [str(checkpoint), weights] if checkpoint is not None else None,
                       "args": args, "torch": torch.__version__, "code": code_sha256()},
                      sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def record_path(root: str | Path, cfg: Config, args: Mapping[str, Any]) -> Path:
    return Path(root) / SPECS_DIR / f"{cfg.name}-{spec_key(cfg, args)}.json"


def read_record(path: Path, cfg: Config, args: Mapping[str, Any]) -> Optional[ModelSpec]:
    """The spec recorded at ``path`` (its model built on first use), or None where there is no usable
    record there (missing, unsealed, sealed with another key, edited, unreadable)."""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("kind") != KIND or doc.get("format_version") != FORMAT_VERSION:
            return None
        check_seal(path, doc)
        return ModelSpec.from_dict(cfg, doc["spec"], partial(ModelSpec.from_config, cfg, **args))
    except (OSError, ValueError, KeyError, TypeError, ArtifactError):
        return None


def write_record(path: Path, spec: ModelSpec) -> None:
    """Write the sealed record of ``spec`` at ``path`` atomically (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = seal_manifest({"kind": KIND, "format_version": FORMAT_VERSION, "spec": spec.to_dict()})
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"   # what an interrupted run removes (bidl-run)
    try:
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def recorded_spec(root: str | Path, cfg: Config, args: Mapping[str, Any]) -> tuple[ModelSpec, bool]:
    """``ModelSpec.from_config(cfg, **args)``, read back from its record under ``root`` when there is
    one, else resolved; and whether it was read back. Nothing is written here: a compile records the
    spec once its artifacts are there (:meth:`compile.job.CompileJob.record_spec`), so a command that
    compiles nothing or fails leaves no record."""
    spec = read_record(record_path(root, cfg, args), cfg, args)
    return (spec, True) if spec is not None else (ModelSpec.from_config(cfg, **args), False)
