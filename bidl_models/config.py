"""Config files in BIDL's format: plain Python files with top-level dicts, in both of its dialects.

The user guide's dialect (``c0, h0, w0``, mmcv ``lr_config``) and the public repository's
(``input_channels, h, w``, torch scheduler names, top-level ``warmup``, ``fp16``, ``data.*`` without
``type``) both load unchanged. ``{{ fileDirname }}``, ``{{ fileBasename }}``,
``{{ fileBasenameNoExtension }}`` and ``{{ fileExtname }}`` in a file are replaced by its own path
pieces before it runs. After loading, :func:`normalize` fills what the dialects leave implicit:
``data.<split>.type`` from ``dataset_type``, and ``lifplus_form='bidl'`` for LIF+ backbones (BIDL's
LIF+ update, so BIDL-trained LIF+ weights reproduce BIDL's outputs; a config may set
``lifplus_form='documented'``).

Project extensions: ``_base_ = 'base.py'`` (or a list) inherits from other files, relative to the
including file; dicts merge recursively, ``_delete_=True`` inside a dict replaces the base's dict
instead. Overrides from the command line are ``key.sub=value`` strings (value parsed as a Python
literal, else a string; digits index lists).

``NAME_OR_PATH`` is a path, or a bare config stem searched (``<stem>.py`` anywhere below) in the
``config_root`` directories given, then those in the ``BIDL_CONFIG_ROOT`` environment variable
(``os.pathsep``-separated; e.g. a BIDL checkout, whose configs sit in
``applications/classification/<category>/<dataset>/<model>/``), then ``./configs`` and this
shipped ``bidl_models/configs/``.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
import types
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

REPO_CONFIGS = Path(__file__).resolve().parent / "configs"   # shipped inside the package (wheel installs too)
CONFIG_ROOT_ENV = "BIDL_CONFIG_ROOT"
DATA_SPLITS = ("train", "val", "test", "test_gpu")
_SUBST = re.compile(r"\{\{\s*(fileDirname|fileBasenameNoExtension|fileBasename|fileExtname)\s*\}\}")


class Config(dict):
    """A dict whose keys also read as attributes (``cfg.model.backbone.type``), recursively."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        for k, v in list(self.items()):
            dict.__setitem__(self, k, _wrap(v))
        self.__dict__["name"] = ""
        self.__dict__["filename"] = ""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("name", "filename"):
            self.__dict__[key] = value
        else:
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __deepcopy__(self, memo: dict) -> "Config":
        out = Config({k: copy.deepcopy(v, memo) for k, v in self.items()})
        out.name, out.filename = self.name, self.filename
        return out

    def to_dict(self) -> dict:
        """Plain dicts and lists all the way down."""
        return _unwrap(self)

    def sha256(self) -> str:
        """Content hash of the merged config (stable across key order and file layout)."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()


def _wrap(v: Any) -> Any:
    if isinstance(v, Config):
        return v
    if isinstance(v, Mapping):
        return Config(v)
    if isinstance(v, list):
        return [_wrap(x) for x in v]
    return v


def _unwrap(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _unwrap(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return type(v)(_unwrap(x) for x in v)
    return v


def config_roots(config_root: str | Path | Sequence[str | Path] | None = None) -> list[Path]:
    """Where bare config stems are searched, in order: ``config_root``, ``$BIDL_CONFIG_ROOT``,
    ``./configs``, the shipped ``bidl_models/configs/``."""
    if config_root is None:
        given: list = []
    elif isinstance(config_root, (str, Path)):
        given = [config_root]
    else:
        given = list(config_root)
    env = [p for p in os.environ.get(CONFIG_ROOT_ENV, "").split(os.pathsep) if p]
    roots = [Path(p).expanduser() for p in (*given, *env)] + [Path.cwd() / "configs", REPO_CONFIGS]
    return list(dict.fromkeys(roots))


def find_config(name_or_path: str | Path, search: Iterable[Path] = (),
                config_root: str | Path | Sequence[str | Path] | None = None) -> Path:
    """Resolve a config path or a bare stem (``clif3fc3dm_itout-b16x1-dvsmnist``) to a file.

    A stem is looked up as ``<stem>.py`` anywhere below each root of :func:`config_roots` (``search``
    first); the first root holding it wins, and two different files of that name in one root are
    an error naming both.
    """
    p = Path(name_or_path)
    if p.is_file():
        return p
    stem = p.name[:-3] if p.name.endswith(".py") else p.name
    roots = list(dict.fromkeys([*map(Path, search), *config_roots(config_root)]))
    for root in roots:
        if root.is_dir():
            hits = sorted(h for h in root.rglob(f"{stem}.py") if h.is_file())
            if len(hits) > 1 and len({h.resolve() for h in hits}) > 1:
                raise ValueError(f"config {stem!r} is ambiguous under {str(root)!r}: {[str(h) for h in hits]}; "
                                 "give the path")
            if hits:
                return hits[0]
    given = [str(r) for r in roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    hint = f" (not directories: {missing})" if missing else ""
    raise FileNotFoundError(f"config {str(name_or_path)!r}: no such file, and no {stem}.py under {given}{hint}; "
                            f"give a path, --config-root DIR or ${CONFIG_ROOT_ENV}")


def substitute(src: str, path: Path) -> str:
    """Replace ``{{ fileDirname }}``-style placeholders with the pieces of ``path`` (as BIDL/mmcv)."""
    path = path.resolve()
    values = {"fileDirname": path.parent.as_posix(), "fileBasename": path.name,
              "fileBasenameNoExtension": path.stem, "fileExtname": path.suffix}
    return _SUBST.sub(lambda m: values[m.group(1)], src)


def _read_file(path: Path) -> dict:
    try:
        src = path.read_text()
    except OSError as e:
        raise FileNotFoundError(f"config {str(path)!r}: cannot read ({e})") from None
    src = substitute(src, path)
    try:
        code = compile(src, str(path), "exec")
    except SyntaxError as e:
        raise ValueError(f"config {str(path)!r} does not parse: line {e.lineno}: {e.msg}") from None
    ns: dict[str, Any] = {"__file__": str(path), "__name__": "__config__"}
    try:
        exec(code, ns)  # config files are Python by design (the user guide's format)
    except SystemExit as e:   # sys.exit() in a config is an error of that file, not the command's exit
        raise ValueError(f"config {str(path)!r} called sys.exit({e.code!r}) while loading") from None
    except Exception as e:  # noqa: BLE001 - report any failure of the user's file
        raise ValueError(f"config {str(path)!r} failed to execute: {type(e).__name__}: {e}") from None
    return {k: v for k, v in ns.items()
            if (k == "_base_" or not k.startswith("_"))
            and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def merge(base: Mapping, child: Mapping) -> dict:
    """Recursive merge: child wins; a child dict with ``_delete_=True`` replaces the base's."""
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, Mapping) and v.get("_delete_"):
            out[k] = {kk: vv for kk, vv in v.items() if kk != "_delete_"}
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _load(path: Path, seen: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config {str(path)!r}: _base_ cycle through {[str(s) for s in seen]}")
    raw = _read_file(path)
    bases = raw.pop("_base_", [])
    if isinstance(bases, (str, Path)):
        bases = [bases]
    if not isinstance(bases, (list, tuple)):
        raise ValueError(f"config {str(path)!r}: _base_={bases!r}: expected a file name or a list of them")
    merged: dict = {}
    for b in bases:
        bp = (path.parent / b)
        if not bp.is_file():
            raise FileNotFoundError(f"config {str(path)!r}: _base_ {str(b)!r} not found (looked at {str(bp)!r})")
        merged = merge(merged, _load(bp, seen + (path,)))
    return merge(merged, raw)


def parse_value(text: str) -> Any:
    """``'3' -> 3``, ``'[1, 2]' -> [1, 2]``, ``'None' -> None``, anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        return text


def apply_override(cfg: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place (creates missing dict levels)."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key.sub=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {item!r}: empty key part in {key!r}")
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i])} is a list of {len(node)}; "
                                 f"{part!r} is not a valid index")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            elif not isinstance(node[part], (Mapping, list)):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:i + 1])} is "
                                 f"{node[part]!r}, not a dict")
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ValueError(f"override {item!r}: {last!r} is not a valid index of a list of {len(node)}")
        node[int(last)] = parse_value(text)
    else:
        if len(parts) >= 2 and parts[-2] == "backbone" and last not in node:
            last = _dialect_spelling(node, last)
        node[last] = parse_value(text)


_ALIASES = {"c0": "input_channels", "h0": "h", "w0": "w"}
_ALIASES.update({v: k for k, v in list(_ALIASES.items())})


def _dialect_spelling(backbone: Mapping, key: str) -> str:
    """``h0`` for a backbone written with ``h0``, ``h`` for one written with ``h``: an override in either
    dialect sets the key the config already has."""
    other = _ALIASES.get(key)
    return other if other is not None and other in backbone else key


def normalize(cfg: dict) -> dict:
    """Fill, in place, what BIDL's dialects leave implicit (see the module docstring); returns ``cfg``.

    ``data.<train|val|test|test_gpu>`` without ``type`` get ``dataset_type``; every ``model`` /
    ``model_<i>`` backbone with ``neuron='lifplus'`` and no ``lifplus_form`` gets ``'bidl'``.
    """
    data, dtype = cfg.get("data"), cfg.get("dataset_type")
    if isinstance(data, dict) and dtype is not None:
        for split in DATA_SPLITS:
            d = data.get(split)
            if isinstance(d, dict) and "type" not in d:
                d["type"] = dtype
    for key in [k for k in cfg if k == "model" or (k.startswith("model_") and k[6:].isdigit())]:
        bb = cfg[key].get("backbone") if isinstance(cfg[key], dict) else None
        if (isinstance(bb, dict) and str(bb.get("neuron", "lif")).lower() == "lifplus"
                and "lifplus_form" not in bb):
            bb["lifplus_form"] = "bidl"
    return cfg


def load_config(name_or_path: str | Path, overrides: Sequence[str] = (),
                config_root: str | Path | Sequence[str | Path] | None = None) -> Config:
    """Load a config file (either dialect, ``_base_`` inheritance), apply ``key.sub=value``
    overrides, then :func:`normalize`. ``config_root``: directories searched for a bare stem."""
    path = find_config(name_or_path, config_root=config_root)
    raw = _load(path, ())
    for item in overrides:
        apply_override(raw, item)
    cfg = Config(normalize(raw))
    cfg.name = path.stem
    cfg.filename = str(path.resolve())
    return cfg


def config_text(cfg: Mapping, header: str = "") -> str:
    """The merged config as a config file (one ``key = value`` per top-level key, Python literals) that
    :func:`load_config` reads back to the same dict. ValueError naming a key whose value is not a literal."""
    import pprint
    lines = [f"# {h}" for h in header.splitlines()] + ([""] if header else [])
    for k, v in _unwrap(dict(cfg)).items():
        text = pprint.pformat(v, width=100, sort_dicts=False)
        try:
            ok = ast.literal_eval(text) == v
        except (ValueError, SyntaxError):
            ok = False
        if not ok:
            raise ValueError(f"config key {k!r}: value {v!r} cannot be written as a Python literal")
        lines.append(f"{k} = {text}")
    return "\n".join(lines) + "\n"


def dump_config(cfg: Mapping, path: str | Path, header: str = "") -> Path:
    """Write :func:`config_text` to ``path`` (atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_text(cfg, header))
    os.replace(tmp, path)
    return path


def model_segment_configs(cfg: Mapping) -> list[tuple[str, dict]]:
    """``[('model_0', backbone_cfg), ...]`` from ``model_0..n`` keys, or ``[('model', ...)]``."""
    keys = sorted((k for k in cfg if k.startswith("model_") and k[6:].isdigit()), key=lambda k: int(k[6:]))
    if keys:
        want = [f"model_{i}" for i in range(len(keys))]
        if keys != want:
            raise ValueError(f"segment models {keys}: expected consecutive keys {want}")
    else:
        if "model" not in cfg:
            raise ValueError("config has no 'model' (nor model_0..n) key")
        keys = ["model"]
    out = []
    for k in keys:
        m = cfg[k]
        if not isinstance(m, Mapping) or not isinstance(m.get("backbone"), Mapping):
            raise ValueError(f"{k}.backbone: expected a dict with a 'type' key, got "
                             f"{m.get('backbone') if isinstance(m, Mapping) else m!r}")
        out.append((k, _unwrap(m["backbone"])))
    return out


def build_segments(cfg: Mapping, seed: Optional[int] = 0, model_in_shape: Optional[Sequence[int]] = None,
                   checkpoint: Optional[str | Path] = None):
    """The config's model segments, validated: ``model_0..n`` with ``split`` (contiguous, covering
    the model, chaining, matching ``models_compile_inputshape`` if given), or ``model`` whole.

    With ``checkpoint``, every segment's backbone loads its weights (strictly) before it is cut.
    """
    from .backbones import build_backbone
    from .checkpoint import load_weights, read_state_dict

    sd = read_state_dict(checkpoint) if checkpoint is not None else None
    from .segments import check_chain, validate_splits

    entries = model_segment_configs(cfg)
    nets, splits, names = [], [], []
    for key, bb in entries:
        split = bb.pop("split", None)
        net = build_backbone(bb, seed=seed, where=f"{key}.backbone")
        if sd is not None:
            load_weights(net, sd, f"checkpoint {str(checkpoint)!r}")
        nets.append(net)
        splits.append(list(split) if split is not None else [0, net.n_blocks])
        names.append(f"{key}.backbone.split")
        if split is None and len(entries) > 1:
            raise ValueError(f"{key}.backbone has no 'split' but the config has {len(entries)} segment models")
    n = nets[0].n_blocks
    for key, net in zip(names, nets):
        if net.n_blocks != n:
            raise ValueError(f"{key}: its backbone has {net.n_blocks} blocks, model_0's has {n}")
    ranges = validate_splits(splits, n, full=True, names=names, backbone=nets[0])
    segs = [net.segment(s, e) for net, (s, e) in zip(nets, ranges)]
    inshapes = cfg.get("models_compile_inputshape")
    if inshapes is not None and len(segs) == 1 and len(inshapes) != 1:
        inshapes = None  # a single whole model: the key describes its split variant
    check_chain(segs, model_in_shape, inshapes, [k for k, _ in entries])
    return segs


def backbone_config(cfg: Mapping) -> dict:
    """The whole model's backbone dict: ``model.backbone``, or ``model_0``'s without its ``split``
    (every ``model_<i>`` of a split config describes the same network)."""
    entries = model_segment_configs(cfg)
    bb = dict(entries[0][1])
    bb.pop("split", None)
    return bb


def load_model(config: str | Path | Mapping, checkpoint: Optional[str | Path] = None, *, seed: Optional[int] = 0,
               overrides: Sequence[str] = (), config_root: str | Path | Sequence[str | Path] | None = None):
    """The config's whole backbone in eval mode, with ``checkpoint``'s weights (BIDL's or the
    project's file, loaded strictly) or seeded initial weights.

    ``config``: a name, a path or a loaded config. ``model(x[B, T, ...])`` returns the logits
    ``[B, nclass]`` (temporal mean of the per-step outputs for ``amode='mean'``, as BIDL's
    backbones); ``model.run(x[T, B, ...], state)`` runs chunks with explicit state.
    """
    from .backbones import build_backbone
    from .checkpoint import load_weights, read_state_dict

    cfg = config if isinstance(config, Mapping) else load_config(config, overrides, config_root)
    net = build_backbone(backbone_config(cfg), seed=seed)
    if checkpoint is not None:
        load_weights(net, read_state_dict(checkpoint), f"checkpoint {str(checkpoint)!r}")
    return net.eval()
