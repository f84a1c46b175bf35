"""Tensor specs: the names, shapes and dtypes that segments, artifacts and channels agree on."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

State = dict[str, Tensor]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32,
    "int64": torch.int64, "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32 -> 'float32'``."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    """``'float32' -> torch.float32``; ValueError naming the accepted names otherwise."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(_DTYPES)}") from None


def one_hot_ids(x: Tensor) -> Tensor | None:
    """Token ids ``[...]`` (int64) of one-hot rows ``x`` ``[..., V]`` (BIDL's ``ToOneHot`` chip input:
    exactly one 1 per row, zeros elsewhere); None when ``x`` is not such a float tensor."""
    if not x.is_floating_point() or x.dim() < 1 or x.shape[-1] < 1:
        return None
    if not (((x == 0) | (x == 1)).all() and (x.sum(-1) == 1).all()):
        return None
    return x.argmax(-1).to(torch.int64)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``shape`` includes the batch dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=torch_dtype(self.dtype)).element_size()

    def with_batch(self, batch: int) -> "TensorSpec":
        return TensorSpec(self.name, (batch,) + tuple(self.shape[1:]), self.dtype)

    def zeros(self, device: str | torch.device = "cpu") -> Tensor:
        return torch.zeros(self.shape, dtype=torch_dtype(self.dtype), device=device)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d.get("dtype", "float32")))

    @classmethod
    def of(cls, name: str, t: Tensor) -> "TensorSpec":
        return cls(name, tuple(t.shape), dtype_name(t.dtype))


def specs_of(state: Mapping[str, Tensor]) -> list[TensorSpec]:
    """Specs of a state dict, in its order."""
    return [TensorSpec.of(k, v) for k, v in state.items()]


def zero_state(specs: Iterable[TensorSpec], device: str | torch.device = "cpu") -> State:
    """A fresh (all-zero) state for the given specs."""
    return {s.name: s.zeros(device) for s in specs}


def sub_state(state: Mapping[str, Tensor] | None, prefix: str) -> State | None:
    """Entries of ``state`` under ``prefix.``, with the prefix stripped (None stays None)."""
    if state is None:
        return None
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def prefixed(state: Mapping[str, Tensor], prefix: str) -> State:
    """``{k: v} -> {prefix.k: v}``."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def known_fields(cls: type, d: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``d`` as keyword arguments of dataclass ``cls``; ValueError naming unknown keys (``what``: for the message)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; expected some of {sorted(known)}")
    return dict(d)
