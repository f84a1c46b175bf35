"""Reading data files safely, written once for every dataset module.

* :func:`safe_unpickle` / :class:`SafeUnpickler`: pickles of numpy arrays and plain containers only
  (a data file cannot run code); used for the guide's ``.pkl`` frame files, RGB-Gesture's pickles and
  the object arrays inside BIDL's ``*_datas.npy`` caches (:func:`load_object_npy`).
* The project's preprocessed frame files (written by ``python -m bidl_models.datasets.convert``):

  - ``.pkl`` -- the user guide's layout: a pickle of ``(packed, labels, shape)`` where ``packed`` is a
    list of ``np.packbits(frames > 0)`` (binary frames: "at least one event"), ``labels`` a list of ints
    and ``shape`` the ``(T, C, H, W)`` of every sample.
  - ``.npz`` -- event counts: ``frames`` uint8 ``[N, T, C, H, W]`` (counts saturated at 255, never
    wrapped), ``labels`` int64 ``[N]``, ``classes`` (str), ``meta`` (JSON text).

  Either may have a ``<same name>.json`` beside it with ``classes`` and conversion metadata.
* :func:`missing` -- the one-line FileNotFoundError every dataset raises when its data is absent
  (nothing is ever downloaded).
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

FRAME_EXTS = (".pkl", ".npz")


class SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numpy scalars and plain containers only."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a data file holds numpy arrays only")


def safe_unpickle(raw: bytes) -> Any:
    """``pickle.loads`` restricted to numpy arrays and plain containers."""
    return SafeUnpickler(io.BytesIO(raw)).load()


def read_bytes(path: str | Path, what: str) -> bytes:
    """The file's bytes; FileNotFoundError ``"<what> '<path>': no such file"`` when absent."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r}: no such file")
    return p.read_bytes()


def load_array(path: str | Path, who: str, key: Optional[str] = None, ndim: Optional[int] = None,
               layout: str = "") -> np.ndarray:
    """An array from an ``.npy``, or the array ``key`` of an ``.npz``, without pickles; errors name ``who``
    and the file (absent, no such key, corrupt, not ``ndim``-dimensional: ``layout`` says what is expected)."""
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{who}: {path!r}: no such file")
    try:
        if key is None or path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                arr = z[key]
    except KeyError:
        raise ValueError(f"{who}: {path!r} has no array {key!r}") from None
    except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
        raise ValueError(f"{who}: {path!r} is corrupt: {type(e).__name__}: {e}") from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{who}: {path!r} holds several arrays; expected one")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{who}: {path!r} holds {list(arr.shape)}; expected {layout or f'{ndim} dimensions'}")
    return arr


def missing(dataset: str, expected: Sequence[str], hint: str = "") -> FileNotFoundError:
    """One-line error: where the dataset's files were expected (nothing is downloaded)."""
    where = "; or ".join(expected)
    return FileNotFoundError(f"{dataset}: data not found; expected {where}{f' ({hint})' if hint else ''}. "
                             "Nothing is downloaded: put the files there or set data_prefix")


def load_object_npy(path: str | Path) -> np.ndarray:
    """An ``np.save``'d array, object arrays included (as BIDL writes its ``*_datas.npy`` frame caches),
    unpickled with :class:`SafeUnpickler` instead of ``allow_pickle=True``."""
    raw = read_bytes(path, "npy file")
    fh = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read_header(fh)
        if not dtype.hasobject:
            fh.seek(0)
            return np.load(fh, allow_pickle=False)
        arr = SafeUnpickler(fh).load()
    except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
        raise ValueError(f"npy file {str(path)!r} is corrupt or unsafe: {type(e).__name__}: {e}") from None
    if not isinstance(arr, np.ndarray) or tuple(arr.shape) != tuple(shape):
        raise ValueError(f"npy file {str(path)!r}: header says shape {tuple(shape)}, the data does not match")
    return arr


# ------------------------------------------------------------------------------ frame files

def resolve_frames_file(data_prefix: str | Path, where: str = "data_prefix") -> Path:
    """The preprocessed file for a ``data_prefix``: the path itself, or ``<prefix>.pkl`` / ``.npz``."""
    cands = frame_file_candidates(data_prefix)
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{where}={str(data_prefix)!r}: no preprocessed dataset file (looked for "
        f"{[str(c) for c in cands]}); make one from the raw dataset with "
        "`python -m bidl_models.datasets.convert --dataset NAME --root RAW_DIR --out OUT_DIR`")


def frame_file_candidates(data_prefix: str | Path) -> list[Path]:
    p = Path(str(data_prefix))
    cands = [p] if p.suffix in FRAME_EXTS else []
    base = str(data_prefix).rstrip("/\\")
    return cands + [Path(base + ext) for ext in FRAME_EXTS]


def save_frames_file(path: str | Path, frames: Sequence[np.ndarray], labels: Sequence[int],
                     classes: Optional[Sequence[str]] = None, meta: Optional[Mapping[str, Any]] = None) -> Path:
    """Write samples ``[T, C, H, W]`` as ``.pkl`` (guide layout, binary, bit-packed) or ``.npz`` (counts),
    plus a ``.json`` sidecar with ``classes`` and ``meta``. Returns the data file's path."""
    path = Path(path)
    if path.suffix not in FRAME_EXTS:
        raise ValueError(f"frame file {str(path)!r}: expected a name ending in {list(FRAME_EXTS)}")
    if len(frames) != len(labels):
        raise ValueError(f"save_frames_file: {len(frames)} samples but {len(labels)} labels")
    shapes = {tuple(f.shape) for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"save_frames_file {str(path)!r}: samples differ in shape: {sorted(shapes)}")
    shape = shapes.pop() if shapes else (0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".pkl":
        packed = [np.packbits(np.asarray(f) > 0) for f in frames]
        with open(tmp, "wb") as fh:
            pickle.dump((packed, [int(l) for l in labels], tuple(int(s) for s in shape)), fh, protocol=4)
    else:
        arr = np.stack([np.minimum(np.asarray(f), 255).astype(np.uint8) for f in frames]) if frames else \
            np.zeros((0,) + shape, np.uint8)
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, frames=arr, labels=np.asarray(labels, np.int64),
                                classes=np.array(list(classes or []), dtype=str),
                                meta=np.array(json.dumps(dict(meta or {}))))
    tmp.replace(path)
    side = dict(meta or {})
    side.update(classes=list(classes) if classes is not None else None, num_samples=len(frames),
                shape=list(shape), format=path.suffix[1:])
    path.with_suffix(".json").write_text(json.dumps(side, indent=1) + "\n")
    return path


def load_frames_file(path: str | Path) -> tuple[list[dict], Optional[list[str]], dict]:
    """``(data_infos, classes or None, meta)`` from a ``.pkl`` / ``.npz`` frame file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise FileNotFoundError(f"frame file {str(path)!r}: cannot read ({e})") from None
    classes, meta = None, {}
    side = path.with_suffix(".json")
    if side.is_file():
        meta = json.loads(side.read_text())
        classes = meta.get("classes")
    infos: list[dict] = []
    try:
        if path.suffix == ".pkl":
            packed, labels, shape = safe_unpickle(raw)
            shape = tuple(int(s) for s in shape)
            nbytes = (int(np.prod(shape)) + 7) // 8
            for i, (d, l) in enumerate(zip(packed, labels)):
                d = np.asarray(d, np.uint8).reshape(-1)
                if d.size != nbytes:
                    raise ValueError(f"sample {i} has {d.size} packed bytes, expected {nbytes} for shape {shape}")
                infos.append({"img": d, "pack": shape, "gt_label": np.int64(l)})
            if len(packed) != len(labels):
                raise ValueError(f"{len(packed)} samples but {len(labels)} labels")
        elif path.suffix == ".npz":
            with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                frames, labels = z["frames"], z["labels"]
                if "classes" in z and z["classes"].size and classes is None:
                    classes = [str(c) for c in z["classes"]]
                if "meta" in z:
                    meta = {**json.loads(str(z["meta"])), **meta}
            if frames.ndim != 5 or len(frames) != len(labels):
                raise ValueError(f"frames {list(frames.shape)} / labels {list(labels.shape)}: expected "
                                 "[N, T, C, H, W] and [N]")
            infos = [{"img": frames[i], "gt_label": np.int64(labels[i])} for i in range(len(labels))]
        else:
            raise ValueError(f"unknown extension; expected one of {list(FRAME_EXTS)}")
    except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
        raise ValueError(f"frame file {str(path)!r} is corrupt or not a frame file: {type(e).__name__}: {e}") from None
    return infos, classes, meta
