"""Samples for a grid: the config's test set, seeded synthetic event frames, and the admission checks
(a bad sample of any kind is rejected alone, with the reason)."""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.datasets import build_dataset
from bidl_models.datasets.synthetic import is_token_dtype, synthetic_samples
from bidl_models.specs import one_hot_ids, torch_dtype

from bidl_runtime.plan.grid_plan import GridPlan


def check_sample(x: Any, expected: Sequence[int], dtype: Optional[torch.dtype] = None) -> Optional[str]:
    """Why a sample can't enter the grid (None if it can): type, layout, device (meta included),
    shape, dtype, NaN/Inf, negative token ids. ``expected``: ``[T, ...]``; ``dtype``: the grid's input
    dtype (float32 / uint8 frames, or int64 / int32 token ids)."""
    if not isinstance(x, Tensor):
        return f"expected a torch.Tensor, got {type(x).__name__}"
    if x.layout != torch.strided:
        return f"a {str(x.layout).removeprefix('torch.')} tensor, expected a dense (strided) one"
    if x.device.type == "meta":
        return "a meta-device tensor (shape only, no data)"
    if x.device.type != "cpu":
        return f"on device {x.device}, expected cpu"
    want = tuple(expected)
    if tuple(x.shape) != want and tuple(x.shape) != (want[0], 1) + want[1:]:
        names = "[T]" if len(want) == 1 else "[T, C, H, W]" if len(want) == 4 else "[T, ...]"
        return f"shape {list(x.shape)}, expected {list(want)} ({names})"
    got = str(x.dtype).removeprefix("torch.")
    if is_token_dtype(dtype):
        if x.is_floating_point() or x.dtype == torch.bool:
            return f"dtype {got}, expected integer token ids ({str(dtype).removeprefix('torch.')})"
        if x.numel() and int(x.min()) < 0:
            return f"negative token id {int(x.min())}"
        return None
    if x.dtype not in (torch.float32, torch.uint8):
        return f"dtype {got}, expected float32 (or uint8 event counts)"
    if x.dtype == torch.float32 and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        return f"{bad} NaN/Inf values"
    return None


def check_label(label: Any, nclass: Optional[int]) -> tuple[Optional[int], Optional[str]]:
    """``(label as int, None)``, or ``(None, why)``: a label is an int class index in ``0..nclass-1``
    (a Python or numpy int, or a one-element integer tensor); None means unlabelled."""
    if label is None:
        return None, None
    v: Any = label
    if isinstance(v, Tensor):
        if v.numel() != 1 or v.dtype.is_floating_point or v.dtype.is_complex or v.dtype == torch.bool \
                or v.device.type == "meta":
            return None, f"label {_short(label)}: expected an int class index"
        v = v.item()
    elif hasattr(v, "dtype") and hasattr(v, "item") and getattr(v, "shape", ()) in ((), (1,)):
        v = v.item()   # numpy scalars
    if isinstance(v, bool) or not isinstance(v, int):
        return None, f"label {_short(label)}: expected an int class index"
    if nclass is not None and not 0 <= v < nclass:
        return None, f"label {v}: expected a class index in 0..{nclass - 1}"
    return v, None


class Unreadable:
    """Stands in a stream for an item its source could not produce (``why``), so the stream goes on."""

    def __init__(self, why: str):
        self.why = why


def admit(item: Any, expected: Sequence[int], nclass: Optional[int],
          dtype: Optional[torch.dtype] = None) -> tuple[Any, Optional[int], Optional[str]]:
    """``(x, label, why)`` for one item of a stream (a tensor or ``(tensor, label)``); ``why`` is
    None when it can enter the grid, else the reason it is rejected (alone: the stream goes on).
    ``dtype``: the grid's input dtype (token models check token ids, :func:`check_sample`)."""
    if isinstance(item, Unreadable):
        return None, None, item.why
    if isinstance(item, tuple):
        if len(item) != 2:
            return None, None, f"a tuple of {len(item)} items, expected a tensor or (tensor, label)"
        x, label = item
    else:
        x, label = item, None
    why = check_sample(x, expected, dtype)
    if why:
        return None, None, why
    label, why = check_label(label, nclass)
    return (None, None, why) if why else (x, label, None)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def dataset_samples(cfg: Mapping, n: Optional[int],
                    dtype: Optional[torch.dtype] = None) -> Optional[Iterator[Any]]:
    """``(img [T, C, H, W] float32, label)`` from the config's test set (uint8 kept; integer token ids
    ``[T]`` as ``dtype`` for a token model, one-hot rows ``[T, V]`` turned into ids; ``img`` alone when
    it has no labels, :class:`Unreadable` for an item that fails to load), or None if unavailable."""
    return _test_split(cfg, n, dtype)[0]


def _test_split(cfg: Mapping, n: Optional[int], dtype: Optional[torch.dtype]) -> tuple[Optional[Iterator[Any]], str]:
    """:func:`dataset_samples`, and why there are none (one line, never cut) when there are none."""
    data = cfg.get("data", {})
    test = data.get("test") if isinstance(data, Mapping) else None
    if not test:
        return None, "the config has no data.test"
    try:
        ds = build_dataset(dict(test), where="data.test")   # the test split when test_mode is absent
    except (FileNotFoundError, ValueError, OSError) as e:
        return None, "the config's data is not available: " + " ".join(str(e).split())

    def gen() -> Iterator[tuple[Tensor, int]]:
        total = len(ds) if n is None else min(n, len(ds))
        labels = None   # the dataset's labels, read once when its items carry none
        for i in range(total):
            try:
                item = ds[i]
                img = item["img"] if isinstance(item, Mapping) else item[0]
                img = torch.as_tensor(img)
                label = item.get("gt_label") if isinstance(item, Mapping) else item[1]
                if label is None and hasattr(ds, "get_gt_labels"):
                    labels = ds.get_gt_labels() if labels is None else labels
                    label = labels[i]
                label = None if label is None else int(torch.as_tensor(label))
            except Exception as e:  # noqa: BLE001 - one unreadable item is rejected alone
                yield Unreadable(f"dataset item {i} cannot be read: {type(e).__name__}: {e}")
                continue
            if is_token_dtype(dtype):
                ids = one_hot_ids(img)          # BIDL's ToOneHot test pipeline: one-hot rows -> ids
                img = ids.to(dtype) if ids is not None else img if img.is_floating_point() else img.to(dtype)
            elif img.dtype != torch.uint8:
                img = img.to(torch.float32)
            yield (img, label) if label is not None else img
    return gen(), ""



def samples_for(cfg: Optional[Mapping], plan: GridPlan, n: int, seed: int = 0,
                high: Optional[int] = None) -> tuple[Iterator[Any], str]:
    """``n`` samples for a plan and what they are: the config's test samples, else seeded synthetic
    ones of the plan's input (event frames, or token ids below ``high``, the model's vocabulary size)."""
    x = plan.outputs(None)[0].layout[0]
    dtype = torch_dtype(x.dtype)
    gen, why = _test_split(cfg, n, dtype) if cfg is not None else (None, "--synthetic")
    if gen is not None:
        return gen, f"{cfg.data.test.type} test split ({n} samples)"
    shape = tuple(x.shape[2:])
    what = f"token ids in [0, {high})" if is_token_dtype(dtype) else "event frames"
    why = why.replace("frames_number_<T>_", f"frames_number_{plan.T}_")
    return (synthetic_samples(plan.T, shape, n, seed, dtype=dtype, high=high),
            f"synthetic seeded {what} {'x'.join(map(str, (plan.T,) + shape))} ({why})")

def batch_of(xs: list[Tensor], shape: tuple[int, ...], dtype, batch: int) -> Tensor:
    """``[T, batch, ...]`` of samples ``xs`` (each ``[T, ...]`` or ``[T, 1, ...]``) in order, zero
    rows after them up to ``batch`` (a last, partial group)."""
    cols = [(x.unsqueeze(1) if x.dim() == len(shape) else x).to(dtype) for x in xs]
    if len(cols) < batch:
        cols.append(torch.zeros((shape[0], batch - len(cols)) + tuple(shape[1:]), dtype=dtype))
    return cols[0] if len(cols) == 1 else torch.cat(cols, 1)
