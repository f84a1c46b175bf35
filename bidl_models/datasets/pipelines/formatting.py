"""Formatting steps: numpy -> tensors, key selection, one-hot tokens (BIDL's names and arguments)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...registry import PIPELINES
from .compose import dict_keys, get

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
                "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}


def as_tensor(v: Any) -> torch.Tensor:
    """A tensor sharing numpy's memory where it can (0-d arrays stay 0-d)."""
    if isinstance(v, torch.Tensor):
        return v
    a = np.asarray(v)
    return torch.from_numpy(a if a.flags.c_contiguous else a.copy())


@PIPELINES.register()
class ToTensorType:
    """``results[k]`` -> torch tensor of ``dtype`` (e.g. 'float32') for each key (``0`` = ``img``)."""

    def __init__(self, keys: Sequence[Any], dtype: str = "float32"):
        if dtype not in TORCH_DTYPES:
            raise ValueError(f"{type(self).__name__}: dtype={dtype!r}: expected one of {sorted(TORCH_DTYPES)}")
        self.keys, self.dtype = dict_keys(keys, type(self).__name__), dtype

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            results[k] = as_tensor(get(results, k, type(self).__name__)).to(TORCH_DTYPES[self.dtype])
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(keys={list(self.keys)}, dtype={self.dtype!r})"


@PIPELINES.register()
class ToTensorTypeDict(ToTensorType):
    """BIDL's dict-sample name for :class:`ToTensorType` (same behaviour)."""


@PIPELINES.register()
class ToTensor:
    """``results[k]`` -> torch tensor (dtype kept) for each key."""

    def __init__(self, keys: Sequence[Any]):
        self.keys = dict_keys(keys, "ToTensor")

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            results[k] = as_tensor(get(results, k, "ToTensor"))
        return results

    def __repr__(self) -> str:
        return f"ToTensor(keys={list(self.keys)})"


@PIPELINES.register()
class ImageToTensor:
    """An image ``[H, W, C]`` (or ``[H, W]``) -> tensor ``[C, H, W]`` for each key (mmcls' step)."""

    def __init__(self, keys: Sequence[Any]):
        self.keys = dict_keys(keys, "ImageToTensor")

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            img = np.asarray(get(results, k, "ImageToTensor"))
            if img.ndim == 2:
                img = img[..., None]
            if img.ndim != 3:
                raise ValueError(f"ImageToTensor: results[{k!r}] has shape {list(img.shape)}; expected [H, W(, C)]")
            results[k] = as_tensor(img.transpose(2, 0, 1))
        return results


@PIPELINES.register()
class Transpose:
    """``results[k] = results[k].transpose(order)`` for each key."""

    def __init__(self, keys: Sequence[Any], order: Sequence[int]):
        self.keys, self.order = dict_keys(keys, "Transpose"), tuple(int(o) for o in order)

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            v = get(results, k, "Transpose")
            if len(self.order) != v.ndim:
                raise ValueError(f"Transpose: order={list(self.order)} for results[{k!r}] of shape {list(v.shape)}")
            results[k] = v.permute(*self.order) if isinstance(v, torch.Tensor) else np.transpose(v, self.order)
        return results


@PIPELINES.register()
class Collect:
    """Keep only ``keys`` (plus ``img_metas`` with ``meta_keys`` if any are given)."""

    def __init__(self, keys: Sequence[Any], meta_keys: Sequence[str] = ()):
        self.keys, self.meta_keys = dict_keys(keys, "Collect"), tuple(meta_keys)

    def __call__(self, results: dict) -> dict:
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise KeyError(f"Collect: the sample has no key(s) {missing} (keys: {sorted(results)})")
        out = {k: results[k] for k in self.keys}
        if self.meta_keys:
            out["img_metas"] = {k: results[k] for k in self.meta_keys if k in results}
        return out

    def __repr__(self) -> str:
        return f"Collect(keys={list(self.keys)})"


@PIPELINES.register()
class ToOneHot:
    """Integer ids -> one-hot float32 over ``param`` classes on a new last axis (``[T]`` -> ``[T, param]``,
    a scalar -> ``[param]``), e.g. IMDB token ids for BIDL's chip-path embedding. Ids outside
    ``0..param-1`` raise ValueError (BIDL's scatter would fail or write out of range)."""

    def __init__(self, keys: Sequence[Any], param: int):
        if int(param) < 1:
            raise ValueError(f"ToOneHot: param={param!r}: expected the number of classes (>= 1)")
        self.keys, self.param = dict_keys(keys, "ToOneHot"), int(param)

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            ids = as_tensor(get(results, k, "ToOneHot"))
            if ids.is_floating_point() or ids.dtype == torch.bool:
                raise ValueError(f"ToOneHot: results[{k!r}] has dtype {ids.dtype}; expected integer ids")
            ids = ids.to(torch.int64)
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.param):
                raise ValueError(f"ToOneHot: results[{k!r}] has ids in [{int(ids.min())}, {int(ids.max())}]; "
                                 f"expected 0..{self.param - 1}")
            results[k] = torch.nn.functional.one_hot(ids, self.param).to(torch.float32)
        return results
