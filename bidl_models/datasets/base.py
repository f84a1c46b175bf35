"""The dataset base class (the user guide's extension point) and the registry builder.

A dataset subclass overrides :meth:`BaseDataset.load_annotations` to return one dict per sample
(``img``: frames ``[T, C, H, W]`` or their packed bits with ``pack`` = shape, ``gt_label``: int; or
whatever its pipeline's loading step reads, e.g. a folder and frame names), optionally
:meth:`BaseDataset.load_sample` to read a sample lazily, registers itself with
``@DATASETS.register()`` and is then usable as ``data.train.type`` in a config. ``dataset[i]`` runs the
sample through the config's pipeline (dict in, dict out).

What a sample gives the rest of the system (``bidl_models.train`` batches it with PyTorch's default
collate; ``bidl_runtime`` streams ``img`` one sample at a time): ``img`` a numpy array or tensor
``[T, C, H, W]`` (``[T]`` token ids for text), ``gt_label`` an int64 scalar, plus only collatable
extras (numbers, strings, fixed-size arrays). Pipelines may leave ``img`` as numpy: the loader turns it
into a tensor.

This module imports no dataset module: the package ``__init__`` imports them all, which registers
them, and :func:`build_dataset` looks them up in the registry.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..registry import DATASETS
from .pipelines.compose import Compose

SPLIT_OF_KEY = {"train": "train", "val": "test", "test": "test", "test_gpu": "test"}


class BaseDataset(torch.utils.data.Dataset):
    """Samples from :meth:`load_annotations`, sent through ``pipeline``; top-k ``evaluate``.

    ``data_prefix``: where the subclass reads its data. ``pipeline``: list of pipeline configs
    (``dict(type=...)``) or callables. ``classes``: overrides the class names (``CLASSES``).
    ``ann_file``: an annotation file (BIDL's key), found as given or under ``data_prefix``.
    """

    CLASSES: Optional[Sequence[str]] = None

    def __init__(self, data_prefix: Optional[str] = None, pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False,
                 ann_file: Optional[str] = None):
        super().__init__()
        self.data_prefix = None if data_prefix is None else str(data_prefix)
        self.ann_file = None if ann_file is None else str(ann_file)
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

    def need_prefix(self) -> Path:
        """``data_prefix`` as a Path; ValueError naming the dataset when it is unset."""
        if not self.data_prefix:
            raise ValueError(f"{type(self).__name__}: data_prefix is required")
        return Path(self.data_prefix)

    def resolve_ann_file(self, required: bool = True) -> Optional[Path]:
        """``ann_file`` as given (absolute or relative to the working directory), else under
        ``data_prefix`` (BIDL's configs use both forms); one-line FileNotFoundError when absent."""
        if not self.ann_file:
            if required:
                raise ValueError(f"{type(self).__name__}: ann_file is required")
            return None
        cands = [Path(self.ann_file)]
        if self.data_prefix and not os.path.isabs(self.ann_file):
            cands.append(Path(self.data_prefix) / self.ann_file)
        for c in cands:
            if c.is_file():
                return c
        raise FileNotFoundError(f"{type(self).__name__}: ann_file={self.ann_file!r} not found (looked for "
                                f"{[str(c) for c in cands]}). Nothing is downloaded: put the file there")

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

        ``results``: per-sample class scores ``[N, nclass]`` in dataset order (or for ``indices``); one
        column is a binary logit (class 1 where it is > 0, as BIDL's one-logit text models). A ``k``
        larger than the number of classes counts every sample as correct.
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
    """``{'accuracy_top-k': percent}``; ties broken by ``torch.topk`` (lowest index first). One score
    column ``s`` is a binary logit: scored as the two classes ``[-s, s]``."""
    if scores.shape[1] == 1:
        scores = torch.cat([-scores, scores], dim=1)
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
    """Build a registered dataset from ``dict(type='Name', data_prefix=..., pipeline=[...], ...)``.

    ``default_args`` fill keys the config leaves out, for datasets that accept them (e.g.
    ``data_root`` from ``data.data_root``). ``where`` names the config key for errors; for a key
    ``data.val`` / ``data.test`` (BIDL's configs give no ``test_mode`` there) a dataset with a
    ``split`` argument gets ``split='test'`` unless the config says otherwise.
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: expected a dataset dict with a 'type' key, got {cfg!r}")
    cfg = dict(cfg)
    cls = DATASETS.get(cfg.get("type"), f"{where}.type") if "type" in cfg else None
    params = inspect.signature(cls).parameters if cls is not None else {}
    for k, v in (default_args or {}).items():
        if k in params:
            cfg.setdefault(k, v)
    split = SPLIT_OF_KEY.get(where.rsplit(".", 1)[-1])
    if split == "test" and "split" in params and "split" not in cfg and "test_mode" not in cfg:
        cfg["split"] = split
    try:
        return DATASETS.build(cfg, where)
    except (FileNotFoundError, ValueError) as e:
        if str(e).startswith(where):
            raise
        raise type(e)(f"{where}: {e}") from None
