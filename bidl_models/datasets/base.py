"""The dataset base class (the user guide's extension point), the registry builder and the
preprocessed frame files.

A dataset subclass overrides :meth:`BaseDataset.load_annotations` to return one dict per sample
(``img``: frames ``[T, C, H, W]`` or their packed bits with ``pack`` = shape, ``gt_label``: int),
registers itself with ``@DATASETS.register()`` and is then usable as ``data.train.type`` in a config.
``dataset[i]`` runs the sample through the config's pipeline (dict in, dict out).

Preprocessed frame files (written by ``python -m bidl_models.datasets.convert``):

* ``.pkl`` -- the user guide's layout: a pickle of ``(packed, labels, shape)`` where ``packed`` is a
  list of ``np.packbits(frames > 0)`` (binary frames: "at least one event"), ``labels`` a list of ints
  and ``shape`` the ``(T, C, H, W)`` of every sample. Read with a restricted unpickler (numpy arrays
  and plain containers only: a data file cannot run code).
* ``.npz`` -- event counts: ``frames`` uint8 ``[N, T, C, H, W]`` (counts saturated at 255, never
  wrapped), ``labels`` int64 ``[N]``, ``classes`` (str), ``meta`` (JSON text).

Either may have a ``<same name>.json`` beside it with ``classes`` and conversion metadata.
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..registry import DATASETS

FRAME_EXTS = (".pkl", ".npz")


class BaseDataset(torch.utils.data.Dataset):
    """Samples from :meth:`load_annotations`, sent through ``pipeline``; top-k ``evaluate``.

    ``data_prefix``: where the subclass reads its data. ``pipeline``: list of pipeline configs
    (``dict(type=...)``) or callables. ``classes``: overrides the class names (``CLASSES``).
    """

    CLASSES: Optional[Sequence[str]] = None

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False):
        from .pipelines import Compose
        super().__init__()
        self.data_prefix = None if data_prefix is None else str(data_prefix)
        self.test_mode = bool(test_mode)
        self.pipeline = Compose(pipeline)
        if classes is not None:
            self.CLASSES = list(classes)
        self.data_infos: list[dict] = self.load_annotations()
        self.check_labels()

    # --------------------------------------------------------------- extension points
    def load_annotations(self) -> list[dict]:
        """One dict per sample, at least ``img`` (or ``img`` + ``pack``) and ``gt_label``."""
        raise NotImplementedError(f"{type(self).__name__} must override load_annotations()")

    def load_sample(self, info: Mapping[str, Any]) -> dict:
        """The raw sample dict before the pipeline: unpacks bit-packed frames (``pack`` = shape)."""
        results = dict(info)
        if "pack" in results:
            shape = tuple(int(s) for s in results.pop("pack"))
            n = int(np.prod(shape))
            results["img"] = np.unpackbits(results["img"], count=n).reshape(shape)
        return results

    # --------------------------------------------------------------- dataset protocol
    def __len__(self) -> int:
        return len(self.data_infos)

    def prepare_data(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"{type(self).__name__}: index {idx} out of range for {len(self)} samples")
        results = self.load_sample(self.data_infos[idx])
        results["sample_idx"] = idx
        return self.pipeline(results)

    def __getitem__(self, idx: int) -> dict:
        return self.prepare_data(idx)

    @property
    def source(self) -> str:
        """What the samples were read from (for error messages)."""
        return self.data_prefix or type(self).__name__

    def get_gt_labels(self) -> np.ndarray:
        """int64 ``[N]`` ground-truth labels."""
        return np.array([int(np.asarray(i["gt_label"])) for i in self.data_infos], dtype=np.int64)

    def check_labels(self) -> None:
        """ValueError naming the source and sample when a label is outside the class list."""
        if self.CLASSES is None or not self.data_infos:
            return
        labels = self.get_gt_labels()
        bad = np.flatnonzero((labels < 0) | (labels >= len(self.CLASSES)))
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"{type(self).__name__} {self.source!r}: sample {i} has gt_label={int(labels[i])}, "
                             f"outside the {len(self.CLASSES)} classes {list(self.CLASSES)} "
                             f"({bad.size} such samples)")

    def evaluate(self, results: Sequence[Any] | np.ndarray | torch.Tensor, metric: str | Sequence[str] = "accuracy",
                 metric_options: Optional[Mapping[str, Any]] = None, indices: Optional[Sequence[int]] = None,
                 logger: Any = None) -> dict[str, float]:
        """Top-k accuracy in percent: ``{'accuracy_top-1': .., 'accuracy_top-5': ..}``.

        ``results``: per-sample class scores ``[N, nclass]`` in dataset order (or for ``indices``).
        A ``k`` larger than the number of classes counts every sample as correct.
        """
        metrics = [metric] if isinstance(metric, str) else list(metric)
        bad = [m for m in metrics if m != "accuracy"]
        if bad:
            raise ValueError(f"metric={bad!r}: only 'accuracy' is supported")
        topk = tuple((metric_options or {}).get("topk", (1, 5)))
        topk = (topk,) if isinstance(topk, int) else topk
        scores = torch.as_tensor(np.asarray(results) if not isinstance(results, torch.Tensor) else results)
        gt = self.get_gt_labels()
        if indices is not None:
            gt = gt[np.asarray(indices, dtype=np.int64)]
        if scores.dim() != 2 or scores.shape[0] != len(gt):
            raise ValueError(f"evaluate: results of shape {list(scores.shape)}; expected [{len(gt)}, nclass]")
        return topk_accuracy(scores, torch.as_tensor(gt), topk)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{'accuracy_top-k': percent}``; ties broken by ``torch.topk`` (lowest index first)."""
    out = {}
    n = max(len(labels), 1)
    for k in topk:
        kk = min(int(k), scores.shape[1])
        pred = scores.topk(kk, dim=1).indices
        correct = (pred == labels.view(-1, 1).to(pred.device)).any(dim=1).float().sum().item()
        out[f"accuracy_top-{int(k)}"] = 100.0 * correct / n
    return out


def build_dataset(cfg: Mapping[str, Any], default_args: Optional[Mapping[str, Any]] = None,
                  where: str = "data") -> BaseDataset:
    """Build a registered dataset from ``dict(type='Name', data_prefix=..., pipeline=[...], ...)``."""
    from . import dvs, glyphs  # noqa: F401  (register the built-in datasets)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a dataset dict with a 'type' key, got {cfg!r}")
    cfg = dict(cfg)
    for k, v in (default_args or {}).items():
        cfg.setdefault(k, v)
    try:
        return DATASETS.build(cfg, where)
    except (FileNotFoundError, ValueError) as e:
        if str(e).startswith(where):
            raise
        raise type(e)(f"{where}: {e}") from None


# ------------------------------------------------------------------------------ frame files

class _SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a frame file holds numpy arrays only")


def resolve_frames_file(data_prefix: str | Path, where: str = "data_prefix") -> Path:
    """The preprocessed file for a ``data_prefix``: the path itself, or ``<prefix>.pkl`` / ``.npz``."""
    p = Path(str(data_prefix))
    cands = [p] if p.suffix in FRAME_EXTS else []
    base = str(data_prefix).rstrip("/\\")
    cands += [Path(base + ext) for ext in FRAME_EXTS]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"{where}={str(data_prefix)!r}: no preprocessed dataset file (looked for "
        f"{[str(c) for c in cands]}); make one from the raw dataset with "
        "`python -m bidl_models.datasets.convert --dataset NAME --root RAW_DIR --out OUT_DIR`")


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
            packed, labels, shape = _SafeUnpickler(io.BytesIO(raw)).load()
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
