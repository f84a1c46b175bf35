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

``NAME_OR_PATH`` is a path, or a bare config stem searched (``<stem>.py`` anywhere below) as BIDL's
tools find it first: in the working directory's ``applications/classification/`` tree (a BIDL
checkout, or its ``tools/`` folder, where BIDL's scripts run); then in the ``config_root``
directories given (``--config-root``), those in the ``BIDL_CONFIG_ROOT`` environment variable
(``os.pathsep``-separated), ``./configs`` and this shipped ``bidl_models/configs/``. The first root
holding the stem wins; :func:`locate_config` also says which other roots hold one (the copies it
shadows). A command's built-in default config is always the shipped file (:func:`shipped_config`):
a file in the working directory never stands in for it.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import re
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

REPO_CONFIGS = Path(__file__).resolve().parent / "configs"   # shipped inside the package (wheel installs too)
CONFIG_ROOT_ENV = "BIDL_CONFIG_ROOT"
BIDL_TREE = Path("applications") / "classification"        # where a BIDL checkout keeps its configs
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
        self.__dict__["found"] = None    # the FoundConfig it was loaded from

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("name", "filename", "found"):
            self.__dict__[key] = value
        else:
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, _wrap(value))

    def __deepcopy__(self, memo: dict) -> "Config":
        out = Config({k: copy.deepcopy(v, memo) for k, v in self.items()})
        out.name, out.filename, out.found = self.name, self.filename, self.found
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


def bidl_roots(relative: bool = False) -> list[Path]:
    """The BIDL checkout the working directory is in, as BIDL's tools see it: the working directory,
    and its parent when it is BIDL's ``tools/`` (BIDL's scripts run there and ``chdir('..')``);
    ``relative``: as ``.`` and ``..``."""
    cwd = Path.cwd()
    here, up = (Path("."), Path("..")) if relative else (cwd, cwd.parent)
    return [here, up] if cwd.name == "tools" else [here]


def _as_list(config_root: str | Path | Sequence[str | Path] | None) -> list:
    if config_root is None:
        return []
    return [config_root] if isinstance(config_root, (str, Path)) else list(config_root)


def config_roots(config_root: str | Path | Sequence[str | Path] | None = None,
                 shipped_only: bool = False) -> list[Path]:
    """Where bare config stems are searched, in order: ``applications/classification/`` of the working
    directory (or of its parent when that is BIDL's ``tools/``), ``config_root``, ``$BIDL_CONFIG_ROOT``,
    ``./configs``, the shipped ``bidl_models/configs/``; only the shipped one with ``shipped_only``."""
    if shipped_only:
        return [REPO_CONFIGS]
    bidl = [r / BIDL_TREE for r in bidl_roots()]
    env = [p for p in os.environ.get(CONFIG_ROOT_ENV, "").split(os.pathsep) if p]
    roots = bidl + [Path(p).expanduser() for p in (*_as_list(config_root), *env)] + [Path.cwd() / "configs",
                                                                                     REPO_CONFIGS]
    return list(dict.fromkeys(roots))


@dataclass(frozen=True)
class FoundConfig:
    """Where a config name led: ``path`` (the file used), ``root`` (the search root it was found
    under; None for a path given as one) and ``shadowed`` (other files of the same stem under later
    roots, which it won over)."""

    path: Path
    root: Optional[Path] = None
    shadowed: tuple[Path, ...] = ()

    @property
    def note(self) -> Optional[str]:
        """One line naming the file that won and the copies it won over; None when there are none."""
        if not self.shadowed:
            return None
        return (f"config {self.path.stem!r}: {self.path} (under {self.root}) won over "
                + ", ".join(map(str, self.shadowed)))


def _hits(root: Path, stem: str) -> list[Path]:
    """The ``<stem>.py`` files below ``root``, one per distinct file, sorted."""
    if not root.is_dir():
        return []
    distinct: dict[Path, Path] = {}
    for h in sorted(h for h in root.rglob(f"{stem}.py") if h.is_file()):
        distinct.setdefault(h.resolve(), h)
    return list(distinct.values())


def locate_config(name_or_path: str | Path, search: Iterable[Path] = (),
                  config_root: str | Path | Sequence[str | Path] | None = None,
                  shipped_only: bool = False) -> FoundConfig:
    """Resolve a config path or a bare stem (``clif3fc3dm_itout-b16x1-dvsmnist``) to a file.

    An existing path is taken as it is (never with ``shipped_only``, which takes a stem's shipped
    file only). A stem is looked up as ``<stem>.py`` anywhere below each root of :func:`config_roots`
    (``search`` first); the first root holding it wins, the others' copies are the result's
    ``shadowed``. Two different files of that name in one root are an error naming both;
    FileNotFoundError lists the roots searched.
    """
    p = Path(name_or_path)
    if p.is_file() and not shipped_only:
        return FoundConfig(p)
    stem = p.name[:-3] if p.name.endswith(".py") else p.name
    roots = list(dict.fromkeys([*map(Path, search), *config_roots(config_root, shipped_only)]))
    won: Optional[tuple[Path, Path]] = None
    others: list[Path] = []
    for root in roots:
        hits = _hits(root, stem)
        if won is None and len(hits) > 1:
            raise ValueError(f"config {stem!r} is ambiguous under {str(root)!r}: {[str(h) for h in hits]}; "
                             "give the path")
        if won is None and hits:
            won = (root, hits[0])
        else:
            others += [h for h in hits if h.resolve() != won[1].resolve()] if won else []
    if won is not None:
        return FoundConfig(won[1], won[0], tuple(dict.fromkeys(others)))
    given = [str(r) for r in roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    hint = f" (not directories: {missing})" if missing else ""
    where = "" if shipped_only else f"; give a path, --config-root DIR or ${CONFIG_ROOT_ENV}"
    raise FileNotFoundError(f"config {str(name_or_path)!r}: no such file, and no {stem}.py under {given}{hint}"
                            f"{where}")


def find_config(name_or_path: str | Path, search: Iterable[Path] = (),
                config_root: str | Path | Sequence[str | Path] | None = None) -> Path:
    """The file of :func:`locate_config` (a config path or a bare stem)."""
    return locate_config(name_or_path, search, config_root).path


def shipped_config(name: str) -> Path:
    """The shipped file of config stem ``name`` (``bidl_models/configs/``): what a command's built-in
    default must use, whatever the working directory holds."""
    return locate_config(name, shipped_only=True).path


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
                config_root: str | Path | Sequence[str | Path] | None = None, shipped_only: bool = False) -> Config:
    """Load a config file (either dialect, ``_base_`` inheritance), apply ``key.sub=value``
    overrides, then :func:`normalize`. ``config_root``: directories searched for a bare stem;
    ``shipped_only``: a bare stem is the shipped file (a command's default config). The result's
    ``found`` (:class:`FoundConfig`) says which file it is and which copies it won over."""
    found = locate_config(name_or_path, config_root=config_root, shipped_only=shipped_only)
    path = found.path
    raw = _load(path, ())
    for item in overrides:
        apply_override(raw, item)
    cfg = Config(normalize(raw))
    cfg.name = path.stem
    cfg.filename = str(path.resolve())
    cfg.found = found
    return cfg


CONFIG_IS_CODE = ("a config file is Python and runs when loaded (as in BIDL and mmcv): load only files you trust; "
                  "the file loaded is printed")


def add_config_arguments(parser: Any, required: bool = True) -> None:
    """``--config``, ``--config-root`` (repeatable) and ``--cfg-options`` on an argparse parser: how every
    command names its config (load it with ``load_config(args.config, args.cfg_options, args.config_root)``)."""
    parser.add_argument("--config", required=required, help="config file, or a config name (stem): found in "
                        "./applications/classification/ (a BIDL checkout), --config-root, $BIDL_CONFIG_ROOT, "
                        "./configs, the shipped ones" + ("" if required else "; default: the shipped default config, "
                        "never a file of the current directory") + "; " + CONFIG_IS_CODE)
    parser.add_argument("--config-root", action="append", default=None, metavar="DIR",
                        help="directory searched for a bare config name (e.g. a BIDL checkout); repeatable")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")


def describe_source(cfg: Config) -> str:
    """``config: <file>`` for a loaded config, and a second line naming the copies of its name it won
    over (:attr:`FoundConfig.note`): what every command prints first."""
    note = cfg.found.note if cfg.found is not None else None
    ran = " (a Python file: it ran when loaded)" if cfg.filename else ""
    return f"config: {cfg.filename or cfg.name}{ran}" + (f"\n{note}" if note else "")


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


def backbone_config(cfg: Mapping) -> dict:
    """The whole model's backbone dict: ``model.backbone``, or ``model_0``'s without its ``split``
    (every ``model_<i>`` of a split config describes the same network)."""
    entries = model_segment_configs(cfg)
    bb = dict(entries[0][1])
    bb.pop("split", None)
    return bb
