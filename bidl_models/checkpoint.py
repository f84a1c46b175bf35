"""Checkpoints: reading BIDL's and the project's files, strict loading, converting between the two.

Two formats, both read everywhere (test, compile, run, train's ``--load-from`` / ``--resume-from``):

* BIDL's (``tools/train.py``): ``dict(state_dict, optimizer_state_dict, scheduler_stat_dict, epoch,
  time, iters, seed, config)``; ``state_dict`` is the backbone's own (keys ``module.``-prefixed when
  trained on GPU), ``epoch`` the 0-based index of the last finished epoch, ``config`` its name.
  A bare ``state_dict`` too.
* the project's (``bidl_models.train``): ``dict(state_dict, optimizer, scheduler, epoch, config,
  meta)`` with classifier keys (``backbone.*``), ``epoch`` = finished epochs; exported weights are
  ``dict(state_dict, config, meta)``.

The mapping is by name: backbone modules carry BIDL's names, so after the wrapper prefixes
(``module.``, then ``backbone.``) are stripped a BIDL key *is* the parameter's key. Loading is
strict: a missing, unexpected or mis-shaped tensor fails naming it, nothing is dropped.
:func:`to_bidl` and :func:`to_project` convert whole files (weights, optimizer and scheduler state,
epoch) and keep what the other format has no field for in ``meta['bidl']``, so BIDL -> project ->
BIDL gives BIDL's file back. Files are read with ``torch.load(weights_only=True)``: a checkpoint
cannot run code.

Files: :func:`save_checkpoint` (atomic), :func:`load_checkpoint` (a training checkpoint, either format,
as the project's dict), :func:`find_latest_checkpoint` / :func:`find_checkpoint` (a work dir's newest,
BIDL's ``--resume-from NAME``), :func:`link_or_copy` (``latest.pth``), and :func:`resolve_checkpoint`:
a ``--checkpoint`` name found where BIDL's ``tools/test.py`` and this project's work dirs put it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from .config import bidl_roots

BIDL_FIELDS = ("state_dict", "optimizer_state_dict", "scheduler_stat_dict", "epoch", "time", "iters", "seed",
               "config")
PREFIXES = ("module.", "backbone.")
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"   # demo weights, inside the package (wheels too)
EPOCH_CKPT = re.compile(r"epoch_(\d+)\.pth")
#: BIDL's ``tools/test.py`` reads ``--checkpoint NAME`` from ``<root>/weight_files/classification/<model
#: folder>/<lif|lifplus>/NAME``: the model folder is the config's folder in BIDL's tree.
BIDL_WEIGHTS = Path("weight_files") / "classification"


def shipped_weights(config_name: str) -> Optional[Path]:
    """The weights shipped for a config (``bidl_models/weights/<config>.pth``), None if there are none:
    what every command uses without ``--checkpoint``."""
    p = SHIPPED_WEIGHTS / f"{config_name}.pth"
    return p if p.is_file() else None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(sd: Mapping[str, Tensor]) -> str:
    """sha256 of weights by content: every tensor's name, dtype, shape and bytes, in name order. The same
    weights give the same digest whatever file holds them (BIDL's format or this project's, any wrapper
    or prefix once stripped)."""
    h = hashlib.sha256()
    for name in sorted(sd):
        t = sd[name].detach().cpu().contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_checkpoint(path: str | Path) -> Any:
    """The object saved in ``path`` (``weights_only``); FileNotFoundError / ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {_unreadable(e)}") from None


def _unreadable(e: Exception) -> str:
    """One line on why ``torch.load`` refused a file (torch's own messages run to many lines)."""
    text = str(e)
    if "central directory" in text or "PytorchStreamReader" in text:
        return "truncated or damaged (an incomplete torch zip archive)"
    if type(e).__name__ == "UnpicklingError":
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported" in ln or "global" in ln.lower()), "")
        return ("not a checkpoint of tensors (torch.load with weights_only=True refused it"
                + (f": {detail}" if detail else "") + ")")
    return f"{type(e).__name__}: {' '.join(text.split())[:300]}"


def checkpoint_format(obj: Any) -> str:
    """``'bidl'`` (BIDL's training dict), ``'project'`` (ours: has ``meta`` / ``optimizer`` or
    ``backbone.`` keys), ``'state_dict'`` (a bare name -> tensor dict)."""
    if isinstance(obj, Mapping) and "state_dict" in obj:
        if any(k in obj for k in ("optimizer_state_dict", "scheduler_stat_dict", "iters")):
            return "bidl"
        if any(k in obj for k in ("meta", "optimizer", "scheduler")):
            return "project"
        sd = obj["state_dict"]
        if isinstance(sd, Mapping) and any(str(k).startswith("backbone.") for k in sd):
            return "project"
        return "bidl"
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        return "project"
    return "state_dict"


def extract_state_dict(obj: object, where: str) -> dict[str, Tensor]:
    """The name -> tensor dict of a checkpoint object (under ``state_dict`` / ``model``, or bare)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {where!r}: expected a state_dict (name -> tensor) or a dict "
                         "with a 'state_dict' key")
    return dict(obj)


def strip_prefixes(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Drop the wrapper prefixes ``module.`` (DataParallel / DDP) then ``backbone.`` (classifier)."""
    out = {}
    for k, v in sd.items():
        for pre in PREFIXES:
            if k.startswith(pre):
                k = k[len(pre):]
        if k in out:
            raise ValueError(f"checkpoint: two tensors map to {k!r} once the prefixes {list(PREFIXES)} are stripped")
        out[k] = v
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The backbone weights of a checkpoint file of either format, prefixes stripped."""
    return strip_prefixes(extract_state_dict(read_checkpoint(path), str(path)))


def _show(xs: list[str]) -> str:
    return ", ".join(xs[:10]) + (f", ... ({len(xs)} in all)" if len(xs) > 10 else "")


def load_weights(module: nn.Module, sd: Mapping[str, Tensor], where: str = "checkpoint") -> None:
    """Strict load; ValueError listing missing / unexpected keys and shape mismatches. A module with
    tied copies of other tensors (FastText's ``embedding_fc.weight``) fills them in first
    (``module.fill_state_dict(sd)``), so files with and without the copy both load."""
    fill = getattr(module, "fill_state_dict", None)
    if callable(fill):
        sd = fill(sd)
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {list(sd[k].shape)} vs model {list(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_show(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_show(shapes)}")
        raise ValueError(f"{where} does not match {type(module).__name__}: " + "; ".join(parts))
    module.load_state_dict(sd, strict=True)


# ------------------------------------------------------------------------------ conversion

def _key_prefix(sd: Mapping[str, Tensor]) -> str:
    return "module." if sd and all(k.startswith("module.") for k in sd) else ""


def to_project(obj: Any, config: Optional[Mapping] = None, where: str = "checkpoint") -> dict:
    """A checkpoint of either format as the project's dict (classifier keys ``backbone.*``).

    From BIDL's: ``optimizer_state_dict`` -> ``optimizer``, ``scheduler_stat_dict`` -> ``scheduler``
    (``{'torch': ...}``), ``epoch`` + 1 -> ``epoch``; the rest (time, iters, seed, config name, the
    ``module.`` prefix, a bare file) in ``meta['bidl']``. A project dict is returned as it is.
    """
    fmt = checkpoint_format(obj)
    if fmt == "project":
        out = dict(obj)
        if "state_dict" not in out:
            out["state_dict"] = {f"backbone.{k}": v for k, v in strip_prefixes(extract_state_dict(obj, where)).items()}
        return out
    raw = extract_state_dict(obj, where)
    sd = {f"backbone.{k}": v for k, v in strip_prefixes(raw).items()}
    bidl: dict[str, Any] = {"key_prefix": _key_prefix(raw), "bare": fmt == "state_dict"}
    out: dict[str, Any] = {"state_dict": sd}
    if fmt == "bidl":
        extra = {k: v for k, v in obj.items() if k not in BIDL_FIELDS}
        bidl.update({k: obj[k] for k in ("time", "iters", "seed", "config") if k in obj}, fields=list(obj),
                    extra=extra)
        if obj.get("optimizer_state_dict") is not None:
            out["optimizer"] = obj["optimizer_state_dict"]
        if obj.get("scheduler_stat_dict") is not None:
            out["scheduler"] = {"torch": obj["scheduler_stat_dict"]}
        if obj.get("epoch") is not None:
            out["epoch"] = int(obj["epoch"]) + 1
    if config is not None:
        out["config"] = dict(config)
    out["meta"] = {"source_format": fmt, "bidl": bidl, "converted": time.strftime("%Y-%m-%d %H:%M:%S")}
    return out


def to_bidl(obj: Any, config_name: Optional[str] = None, where: str = "checkpoint") -> Any:
    """A checkpoint of either format as BIDL's ``tools/train.py`` dict (bare backbone keys, 0-based
    ``epoch``, ``optimizer_state_dict``, ``scheduler_stat_dict``); what came from BIDL goes back as it was."""
    fmt = checkpoint_format(obj)
    if fmt == "bidl":
        return dict(obj)
    proj = to_project(obj, where=where)
    meta = dict(proj.get("meta") or {})
    bidl = dict(meta.get("bidl") or {})
    prefix = bidl.get("key_prefix", "")
    sd = {f"{prefix}{k}": v for k, v in strip_prefixes(extract_state_dict(proj, where)).items()}
    if bidl.get("bare"):
        return sd
    out: dict[str, Any] = {"state_dict": sd}
    sched = proj.get("scheduler")
    fields = bidl.get("fields") or list(BIDL_FIELDS)
    values = {
        "optimizer_state_dict": proj.get("optimizer"),
        "scheduler_stat_dict": sched.get("torch") if isinstance(sched, Mapping) else None,
        "epoch": int(proj["epoch"]) - 1 if proj.get("epoch") is not None else None,
        "time": bidl.get("time", meta.get("time")),
        "iters": bidl.get("iters", meta.get("iter")),
        "seed": bidl.get("seed", meta.get("seed")),
        "config": bidl.get("config", config_name or meta.get("config_name")),
    }
    for k in fields:
        if k in values:
            out[k] = values[k]
    out.update(bidl.get("extra") or {})
    return out


# ------------------------------------------------------------------------------ files

def save_checkpoint(path: Path, obj: Mapping[str, Any]) -> None:
    """Atomic ``torch.save`` (a crash or Ctrl-C mid-write never leaves a half file)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(obj), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint in the project's form (``weights_only``: it cannot run code); BIDL's
    ``tools/train.py`` checkpoints are converted (:func:`to_project`)."""
    ck = read_checkpoint(path)
    if not isinstance(ck, Mapping) or "state_dict" not in ck:
        raise ValueError(f"checkpoint {str(path)!r}: not a training checkpoint (no 'state_dict' key)")
    return to_project(ck, where=str(path)) if checkpoint_format(ck) == "bidl" else dict(ck)


def find_latest_checkpoint(work_dir: Path) -> Optional[Path]:
    """``latest.pth`` in ``work_dir``, else its ``epoch_N.pth`` with the largest N, else None."""
    latest = work_dir / "latest.pth"
    if latest.is_file():
        return latest
    epochs = [(int(m.group(1)), p) for p in work_dir.glob("epoch_*.pth") if (m := EPOCH_CKPT.fullmatch(p.name))]
    return max(epochs)[1] if epochs else None


def find_checkpoint(path: str | Path, work_dir: Path, key: str) -> Path:
    """``path`` as BIDL's ``--resume-from`` means it (a file name in the work dir) or as a path; a bare
    file name is looked for in ``work_dir`` first. FileNotFoundError naming where it looked."""
    p = Path(path)
    cands = [p] if p.is_absolute() else ([work_dir / p, p] if p.parent == Path(".") else [p, work_dir / p])
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{key} {str(path)!r}: no such checkpoint (looked for "
                            f"{[str(c) for c in dict.fromkeys(cands)]})")


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else a copy), replacing it atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def checkpoint_candidates(name: str | Path, config_name: str = "", config_file: str | Path = "",
                          work_dir: Optional[str | Path] = None,
                          config_work_dir: Optional[str | Path] = None) -> list[Path]:
    """Where ``--checkpoint NAME`` is looked for, in order (see :func:`resolve_checkpoint`)."""
    p = Path(name).expanduser()
    if p.is_absolute() or p.parent != Path("."):
        return [p]                                # a path: that file only
    cands = [p]
    if work_dir:
        cands.append(Path(work_dir) / p)
    if config_file:                               # BIDL's tools/test.py: weight_files/<model folder>/<lif|lifplus>/
        folder = Path(config_file).parent.name
        neuron = "lifplus" if "plus" in (config_name or Path(config_file).stem) else "lif"
        cands += [root / BIDL_WEIGHTS / folder / neuron / p for root in bidl_roots(relative=True)]
    if config_work_dir:
        cands.append(Path(config_work_dir) / p)
    if config_name:
        cands.append(Path("work_dirs") / config_name / p)   # bidl_models.train's default work dir
    return list(dict.fromkeys(cands))


def resolve_checkpoint(name: str | Path, cfg: Optional[Any] = None, work_dir: Optional[str | Path] = None,
                       key: str = "--checkpoint") -> Path:
    """The checkpoint file ``name`` names. A path (absolute, or with a folder) is taken as it is; a bare
    file name (``latest.pth``) is looked for, in order: in the working directory, in ``work_dir`` (the
    command's ``--work-dir``), where BIDL's ``tools/test.py`` reads it
    (``./weight_files/classification/<the config's folder>/<lif|lifplus>/``, from a BIDL checkout or its
    ``tools/``), in the config's ``work_dir`` and in ``work_dirs/<config name>/`` (training's default).
    ``cfg``: the loaded config (its ``name`` and ``filename``), or None. FileNotFoundError listing
    every place tried."""
    name_ = str(getattr(cfg, "name", "") or "")
    file_ = str(getattr(cfg, "filename", "") or "")
    own = cfg.get("work_dir") if isinstance(cfg, Mapping) else None
    cands = checkpoint_candidates(name, name_, file_, work_dir, own)
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{key} {str(name)!r}: no such file; looked for {', '.join(map(str, cands))}")
