"""Loading and checking compiled segment artifacts: the API the runtime uses.

An artifact is a directory holding

- ``program.pt2``: the segment's pure chunk function
  ``(x[chunk_len, B, *in], *state) -> (y[chunk_len, B, *out], *new_state)``, either a
  ``torch.export`` ExportedProgram (``format='torch.export'``, loaded with ``torch.export.load``)
  or an AOTInductor package (``format='aoti'``, loaded with ``torch._inductor.aoti_load_package``).
  Neither needs the model's Python source.
- ``net_params.json``: the manifest (state ABI, provenance, cache key, verification result).

The flat state arguments follow the manifest's ``state`` list (the ABI order); :meth:`Artifact.run`
takes and returns named dicts instead. Loading refuses, with :class:`ArtifactError` (a
``ValueError``), a program whose sha256 differs from the manifest, a manifest of an unknown format,
one written by an incompatible torch, one whose keyed digest does not verify, or one that differs
from what the caller ``expect``\\ s.

The keyed digest (``manifest['seal']``): HMAC-SHA256 over the manifest's canonical JSON (which holds
the program's sha256), keyed by this user's artifact key (``artifact_key``). Editing the program and
its recorded sha256 together, or any other manifest field, breaks it; only a holder of the key can
reseal. The program is not deserialised before the seal checks out::

    art = load_artifact("artifacts/net/model_0/t4_b1")
    state = zero_state(art, batch=1)
    y, state = art.run(x_chunk, state)            # x_chunk: [art.chunk_len, 1, *art.input_spec.shape[1:]]
    y, *flat = art(x_chunk, *state.values())      # the same, flat, in ABI order
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.checkpoint import file_sha256
from bidl_models.specs import TensorSpec, torch_dtype

MANIFEST = "net_params.json"
PROGRAM = "program.pt2"
FORMAT_VERSION = 1
KIND = "bidl-segment-artifact"
FORMATS = ("torch.export", "aoti")

SEAL = "seal"
KEY_ENV, KEY_FILE_ENV = "BIDL_ARTIFACT_KEY", "BIDL_ARTIFACT_KEY_FILE"

__all__ = ["Artifact", "ArtifactError", "load_artifact", "zero_state", "read_manifest", "check_program",
           "file_sha256", "torch_compatible", "MANIFEST", "PROGRAM", "FORMAT_VERSION", "artifact_key",
           "seal_manifest", "check_seal"]


class ArtifactError(ValueError):
    """An artifact that must not be used: missing, corrupt, stale, mismatched or incompatible.

    ``path`` is the offending file, ``reason`` one of ``'missing' | 'corrupt' | 'mismatch' |
    'incompatible'``, ``diffs`` the differing fields as ``{field: (artifact's, expected)}``.
    """

    def __init__(self, path: str | Path, reason: str, message: str,
                 diffs: Optional[Mapping[str, tuple[Any, Any]]] = None):
        self.path, self.reason, self.diffs = str(path), reason, dict(diffs or {})
        super().__init__(f"{path}: {message}")


def torch_compatible(built: str, fmt: str, running: str = torch.__version__) -> bool:
    """ExportedPrograms load across patch releases (same major.minor); AOTInductor packages are
    native code built against one torch release (same major.minor.patch). Local tags
    (``+cpu``, ``+cu128``) are ignored."""
    def parts(v: str) -> list[str]:
        return v.split("+")[0].split(".")
    n = 3 if fmt == "aoti" else 2
    return parts(built)[:n] == parts(running)[:n]


def read_manifest(directory: str | Path) -> dict:
    """The parsed ``net_params.json`` of an artifact directory (ArtifactError if absent/unreadable)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(path, "missing", "no manifest: not an artifact directory (compile it first)")
    try:
        man = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(path, "corrupt", f"manifest is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("kind") != KIND:
        raise ArtifactError(path, "corrupt", f"manifest 'kind' is {man.get('kind') if isinstance(man, dict) else None!r}, "
                                             f"expected {KIND!r}")
    if man.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(path, "incompatible", f"manifest format_version={man.get('format_version')!r}, "
                                                  f"this code reads {FORMAT_VERSION}")
    for key in ("program", "input", "output", "state", "chunk_len", "batch", "segment_index", "split",
                "versions", "key", "input_dtype"):
        if key not in man:
            raise ArtifactError(path, "corrupt", f"manifest lacks the key {key!r}")
    if man["program"].get("format") not in FORMATS:
        raise ArtifactError(path, "corrupt", f"program.format={man['program'].get('format')!r}, "
                                             f"expected one of {list(FORMATS)}")
    return man


def check_program(directory: str | Path, man: Mapping) -> Path:
    """The program file, after checking that it exists, hashes to the manifest's sha256, was built by
    a torch this process can load, and that the manifest's keyed digest verifies. ArtifactError otherwise."""
    prog = Path(directory) / man["program"]["file"]
    if not prog.is_file():
        raise ArtifactError(prog, "missing", "program file missing (the manifest names it)")
    sha = file_sha256(prog)
    if sha != man["program"]["sha256"]:
        raise ArtifactError(prog, "corrupt",
                            f"sha256 {sha[:16]}... differs from the manifest's {man['program']['sha256'][:16]}...: "
                            "the program was modified or damaged; rebuild it (compile --force)",
                            {"program.sha256": (sha, man["program"]["sha256"])})
    built = man["versions"].get("torch", "?")
    if not torch_compatible(built, man["program"]["format"]):
        raise ArtifactError(Path(directory) / MANIFEST, "incompatible",
                            f"built with torch {built}, this process runs torch {torch.__version__} "
                            f"({man['program']['format']} programs need the same "
                            f"{'major.minor.patch' if man['program']['format'] == 'aoti' else 'major.minor'}); "
                            "rebuild it (compile --force)", {"versions.torch": (built, torch.__version__)})
    check_seal(directory, man)
    return prog


def key_file() -> Path:
    """Where the artifact key lives: ``$BIDL_ARTIFACT_KEY_FILE``, else ``$XDG_CONFIG_HOME/bidl/artifact.key``
    (``~/.config/bidl/artifact.key``)."""
    if os.environ.get(KEY_FILE_ENV):
        return Path(os.environ[KEY_FILE_ENV])
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "bidl" / "artifact.key"


def artifact_key() -> bytes:
    """The key of artifact seals: ``$BIDL_ARTIFACT_KEY`` (hex), else the key file (see ``key_file``),
    created on first use (256 random bits, mode 0600; concurrent first uses agree on one key).
    Machines that load each other's artifacts need the same key (share the file or the variable)."""
    if os.environ.get(KEY_ENV):
        try:
            return bytes.fromhex(os.environ[KEY_ENV])
        except ValueError:
            raise ArtifactError(KEY_ENV, "incompatible", "is not a hex string") from None
    path = key_file()
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)  # atomic; loses to a concurrent creator, whose key everyone then uses
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
        except OSError as e:
            raise ArtifactError(path, "missing", f"cannot create the artifact key ({e}); set {KEY_FILE_ENV} "
                                                 f"or {KEY_ENV}") from None
    try:
        return bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as e:
        raise ArtifactError(path, "corrupt", f"unreadable artifact key ({e})") from None


def _digest(key: bytes, man: Mapping) -> str:
    body = {k: v for k, v in man.items() if k != SEAL}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"bidl artifact key id|" + key).hexdigest()[:12]


def seal_manifest(man: Mapping) -> dict:
    """``man`` with its keyed digest (what ``compile`` writes; resealing needs the key)."""
    key = artifact_key()
    return dict(man, **{SEAL: {"alg": "hmac-sha256", "key_id": _key_id(key), "digest": _digest(key, man)}})


def check_seal(directory: str | Path, man: Mapping) -> None:
    """ArtifactError unless ``man`` carries a keyed digest that verifies with this user's key."""
    path = Path(directory) / MANIFEST
    seal = man.get(SEAL)
    if not isinstance(seal, Mapping) or not isinstance(seal.get("digest"), str):
        raise ArtifactError(path, "incompatible", "manifest carries no keyed digest (built by an older version, "
                                                  "or the seal was removed): rebuild it (compile --force)")
    key = artifact_key()
    if seal.get("key_id") != _key_id(key):
        raise ArtifactError(path, "incompatible",
                            f"sealed with another artifact key (key id {seal.get('key_id')!r}, this process has "
                            f"{_key_id(key)!r} from {os.environ.get(KEY_ENV) and KEY_ENV or key_file()}): built "
                            f"elsewhere or the key changed; rebuild it, or share the key ({KEY_FILE_ENV})")
    if not hmac.compare_digest(seal["digest"], _digest(key, man)):
        raise ArtifactError(path, "corrupt", "keyed digest does not match: the manifest or the program was "
                                             "changed after it was built; rebuild it (compile --force)")


def _diff_expect(man: Mapping, expect: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields of the manifest's cache key (or top level) that differ from ``expect``."""
    diffs = {}
    for k, want in expect.items():
        have = man["key"].get(k, man.get(k, "<absent>"))
        if _norm(have) != _norm(want):
            diffs[k] = (have, want)
    return diffs


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


class Artifact:
    """A loaded, checked segment program with its manifest.

    ``__call__(x, *state)`` runs the flat ABI; :meth:`run` the named one. Inputs are checked
    against the manifest (chunk length, dtype, per-step shape, batch) before they reach the
    program, so a wrong tensor gives a readable error rather than a guard failure.
    """

    def __init__(self, directory: str | Path, manifest: dict, program: Any):
        self.path = Path(directory)
        self.manifest = manifest
        self._program = program
        self.input_spec = TensorSpec.from_dict(manifest["input"])
        self.output_spec = TensorSpec.from_dict(manifest["output"])
        self.state_specs: list[TensorSpec] = [TensorSpec.from_dict(d) for d in manifest["state"]]
        self.state_names: list[str] = [s.name for s in self.state_specs]
        self.chunk_len: int = int(manifest["chunk_len"])
        self.segment_index: int = int(manifest["segment_index"])
        self.split: tuple[int, int] = tuple(manifest["split"])  # type: ignore[assignment]
        self.batch: int = int(manifest["batch"]["compiled"])
        self.dynamic_batch: bool = bool(manifest["batch"]["dynamic"])
        self.input_dtype: str = manifest["input_dtype"]
        self.format: str = manifest["program"]["format"]
        self.device = torch.device(manifest["program"].get("device", "cpu"))
        self.is_first: bool = self.split[0] == 0
        self.is_last: bool = bool(manifest.get("is_last", False))

    def __repr__(self) -> str:
        return (f"Artifact({str(self.path)!r}, segment={self.segment_index}, split={list(self.split)}, "
                f"chunk_len={self.chunk_len}, batch={self.batch}{'+' if self.dynamic_batch else ''}, "
                f"format={self.format})")

    def _check_batch(self, b: int, what: str) -> None:
        if not self.dynamic_batch and b != self.batch:
            raise ValueError(f"{self.path}: {what} has batch {b}, but this artifact was compiled for a "
                             f"static batch of {self.batch}")

    def _check_inputs(self, x: Tensor, state: Sequence[Tensor]) -> None:
        want = (self.chunk_len, "B") + tuple(self.input_spec.shape[1:])
        if (x.dim() != len(want) or x.shape[0] != self.chunk_len
                or tuple(x.shape[2:]) != tuple(self.input_spec.shape[1:])):
            raise ValueError(f"{self.path}: input x has shape {list(x.shape)}, expected {list(want)} "
                             f"(chunk_len, batch, per-step shape)")
        if x.dtype != torch_dtype(self.input_dtype):
            raise ValueError(f"{self.path}: input x has dtype {str(x.dtype).removeprefix('torch.')}, "
                             f"expected {self.input_dtype} (manifest input_dtype)")
        b = x.shape[1]
        self._check_batch(b, "input x")
        if len(state) != len(self.state_specs):
            raise ValueError(f"{self.path}: got {len(state)} state tensors, expected {len(self.state_specs)} "
                             f"({self.state_names})")
        for t, s in zip(state, self.state_specs):
            if tuple(t.shape) != (b,) + tuple(s.shape[1:]) or t.dtype != torch_dtype(s.dtype):
                raise ValueError(f"{self.path}: state {s.name!r} is {list(t.shape)} "
                                 f"{str(t.dtype).removeprefix('torch.')}, expected "
                                 f"{[b] + list(s.shape[1:])} {s.dtype}")

    @torch.no_grad()
    def __call__(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """``(x_chunk, *state) -> (y_chunk, *new_state)``, state in ABI order (:attr:`state_names`)."""
        self._check_inputs(x, state)
        out = self._program(x, *state)
        return tuple(out)

    def run(self, x: Tensor, state: Optional[Mapping[str, Tensor]] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Named form: ``state`` maps every ABI name to its tensor (None: a fresh sample)."""
        if state is None:
            state = zero_state(self, x.shape[1], x.device)
        missing = [n for n in self.state_names if n not in state]
        extra = [n for n in state if n not in set(self.state_names)]
        if missing or extra:
            raise ValueError(f"{self.path}: state names differ from the manifest; missing {missing}, "
                             f"unexpected {extra}")
        y, *new = self(x, *(state[n] for n in self.state_names))
        return y, dict(zip(self.state_names, new))


def zero_state(artifact: Artifact, batch: Optional[int] = None,
               device: str | torch.device | None = None) -> dict[str, Tensor]:
    """A fresh sample's state (all zeros) for ``batch`` (default: the compiled batch), in ABI order."""
    b = artifact.batch if batch is None else int(batch)
    artifact._check_batch(b, "zero_state")
    dev = artifact.device if device is None else device
    return {s.name: s.with_batch(b).zeros(dev) for s in artifact.state_specs}


def _program_arity(ep: Any) -> tuple[int, int]:
    sig = ep.graph_signature
    return len(sig.user_inputs), len(sig.user_outputs)


def _check_exported(path: Path, ep: Any, man: Mapping) -> None:
    """The exported graph's inputs agree with the manifest (count and non-batch dims)."""
    n_in, n_out = _program_arity(ep)
    n_state = len(man["state"])
    if n_in != 1 + n_state or n_out != 1 + n_state:
        raise ArtifactError(path, "mismatch", f"program takes {n_in} inputs and returns {n_out}; the manifest "
                                              f"describes 1 + {n_state} state tensors each way")
    names = list(ep.graph_signature.user_inputs)
    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    specs = [dict(man["input"], shape=[man["chunk_len"]] + list(man["input"]["shape"]))] + list(man["state"])
    for i, (name, spec) in enumerate(zip(names, specs)):
        v = vals.get(name)
        if v is None:
            continue
        bdim = 1 if i == 0 else 0
        got = [d if isinstance(d, int) else None for d in v.shape]
        want = list(spec["shape"])
        if len(got) != len(want) or any(g is not None and g != w for k, (g, w) in enumerate(zip(got, want))
                                         if k != bdim):
            raise ArtifactError(path, "mismatch", f"program input {i} ({spec['name']}) has shape "
                                                  f"{['B' if g is None else g for g in got]}, the manifest says {want}")


_PROGRAMS: "OrderedDict[tuple[str, str, str], Any]" = OrderedDict()
PROGRAM_CACHE_SIZE = 8


def _cached_program(key: tuple[str, str, str], make: Any) -> Any:
    """In-process LRU of loaded programs keyed by (program sha256, format, device): the bytes were
    just hashed, so an entry is exactly what loading the file again would give."""
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    prog = make()
    _PROGRAMS[key] = prog
    while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
        _PROGRAMS.popitem(last=False)
    return prog


def load_artifact(path: str | Path, expect: Optional[Mapping[str, Any]] = None,
                  device: str | torch.device | None = None) -> Artifact:
    """Load and check the artifact in directory ``path`` (or its ``net_params.json``).

    ``expect``: cache-key fields the caller requires, e.g. ``{'checkpoint_sha256': ..., 'chunk_len': 4}``;
    any difference raises :class:`ArtifactError` naming the field. ``device``: where an
    ExportedProgram runs (moved there; AOTInductor packages run where they were built).
    The program file is hashed and checked on every call; a program with the same sha256 loaded
    before in this process is reused (deserialising a large graph takes seconds).
    """
    d = Path(path)
    if d.name == MANIFEST:
        d = d.parent
    if not d.is_dir():
        raise ArtifactError(d, "missing", "no such artifact directory")
    man = read_manifest(d)
    if expect:
        diffs = _diff_expect(man, expect)
        if diffs:
            txt = "; ".join(f"{k}: artifact has {a!r}, expected {b!r}" for k, (a, b) in diffs.items())
            raise ArtifactError(d / MANIFEST, "mismatch", f"artifact does not match: {txt}", diffs)
    prog_path = check_program(d, man)
    fmt = man["program"]["format"]
    built_on = torch.device(man["program"].get("device", "cpu"))
    sha = man["program"]["sha256"]
    if fmt == "torch.export":
        target = torch.device(device) if device is not None else built_on

        def make_export() -> tuple[Any, Any]:
            try:
                ep = torch.export.load(str(prog_path))
            except Exception as e:  # noqa: BLE001 - any deserialisation failure is a bad program
                raise ArtifactError(prog_path, "corrupt",
                                    f"torch.export.load failed: {type(e).__name__}: {e}") from None
            moved = ep
            if target != built_on:
                from torch.export.passes import move_to_device_pass
                moved = move_to_device_pass(ep, target)
            return ep, moved.module()

        ep, program = _cached_program((sha, fmt, str(target)), make_export)
        _check_exported(prog_path, ep, man)   # every time: the manifest may differ from the last load's
        man = dict(man, program=dict(man["program"], device=str(target)))
    else:
        if device is not None and torch.device(device).type != built_on.type:
            raise ValueError(f"{prog_path}: AOTInductor package built for {built_on}, cannot run on {device}; "
                             "compile it on that device")

        def make_aoti() -> Any:
            try:
                from torch._inductor import aoti_load_package
                return aoti_load_package(str(prog_path))
            except Exception as e:  # noqa: BLE001
                raise ArtifactError(prog_path, "corrupt",
                                    f"aoti_load_package failed: {type(e).__name__}: {e}") from None

        program = _cached_program((sha, fmt, str(built_on)), make_aoti)
    return Artifact(d, man, program)
