"""Tensor specs and segment signatures: the names, shapes and dtypes that segments, artifacts, plans and
channels agree on.

Pure data: importing this module does not import torch (a plan is read without it); the helpers that
make or read tensors import torch when they are called.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Iterable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

State = dict[str, "Tensor"]

ITEM_BYTES: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "uint8": 1, "int8": 1, "int32": 4,
    "int64": 8, "bool": 1,
}


def torch_dtype(name: str) -> "torch.dtype":
    """``'float32' -> torch.float32``; ValueError naming the accepted names otherwise."""
    import torch
    if name not in ITEM_BYTES:
        raise ValueError(f"dtype {name!r}: expected one of {sorted(ITEM_BYTES)}")
    return getattr(torch, name)


def dtype_name(dtype: "torch.dtype") -> str:
    """``torch.float32 -> 'float32'``."""
    return str(dtype).removeprefix("torch.")


def one_hot_ids(x: "Tensor") -> "Tensor | None":
    """Token ids ``[...]`` (int64) of one-hot rows ``x`` ``[..., V]`` (BIDL's ``ToOneHot`` chip input:
    exactly one 1 per row, zeros elsewhere); None when ``x`` is not such a float tensor."""
    import torch
    if not x.is_floating_point() or x.dim() < 1 or x.shape[-1] < 1:
        return None
    if not (((x == 0) | (x == 1)).all() and (x.sum(-1) == 1).all()):
        return None
    return x.argmax(-1).to(torch.int64)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: ``shape`` includes the batch dimension (and, in a chunk, the time dimension
    before it)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        if self.dtype not in ITEM_BYTES:
            raise ValueError(f"dtype {self.dtype!r}: expected one of {sorted(ITEM_BYTES)}")
        return n * ITEM_BYTES[self.dtype]

    def with_batch(self, batch: int) -> "TensorSpec":
        return TensorSpec(self.name, (batch,) + tuple(self.shape[1:]), self.dtype)

    def chunk(self, t: int, name: str | None = None) -> "TensorSpec":
        """``[B, ...]`` per step -> ``[t, B, ...]`` per chunk of ``t`` steps (renamed if ``name``)."""
        return TensorSpec(name or self.name, (t,) + tuple(self.shape), self.dtype)

    def zeros(self, device: "str | torch.device" = "cpu") -> "Tensor":
        import torch
        return torch.zeros(self.shape, dtype=torch_dtype(self.dtype), device=device)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d.get("dtype", "float32")))

    @classmethod
    def of(cls, name: str, t: "Tensor") -> "TensorSpec":
        return cls(name, tuple(t.shape), dtype_name(t.dtype))


@dataclass(frozen=True)
class Signature:
    """What a segment takes and gives: its input, output and state tensors, and the tensors that
    travel with the input / output across a cut inside a residual block (``carry_in`` / ``carry_out``,
    e.g. the block's skip). Per step (``[B, ...]``) for a model segment and in a manifest; per chunk
    (``[t, B, ...]``, see :meth:`chunk`) for a program that a cell runs. State is never chunked."""

    input: TensorSpec
    output: TensorSpec
    state: tuple[TensorSpec, ...]
    carry_in: tuple[TensorSpec, ...] = ()
    carry_out: tuple[TensorSpec, ...] = ()

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """``x`` and its carry, in argument order."""
        return (self.input, *self.carry_in)

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """``y`` and its carry, in result order."""
        return (self.output, *self.carry_out)

    @property
    def state_nbytes(self) -> int:
        return sum(s.nbytes for s in self.state)

    def to_dict(self) -> dict:
        """``input``, ``output``, ``state`` and, where there are any, ``carry_in`` / ``carry_out``
        (a manifest holds these keys among its own)."""
        return {"input": self.input.to_dict(), "output": self.output.to_dict(),
                "state": [s.to_dict() for s in self.state],
                **({"carry_in": [c.to_dict() for c in self.carry_in]} if self.carry_in else {}),
                **({"carry_out": [c.to_dict() for c in self.carry_out]} if self.carry_out else {})}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Signature":
        """The inverse of :meth:`to_dict` (other keys of ``d`` are ignored)."""
        specs = lambda key: tuple(TensorSpec.from_dict(t) for t in d.get(key, ()))  # noqa: E731
        return cls(TensorSpec.from_dict(d["input"]), TensorSpec.from_dict(d["output"]),
                   tuple(TensorSpec.from_dict(t) for t in d["state"]), specs("carry_in"), specs("carry_out"))

    def with_batch(self, batch: int) -> "Signature":
        b = lambda specs: tuple(t.with_batch(batch) for t in specs)  # noqa: E731
        return Signature(self.input.with_batch(batch), self.output.with_batch(batch), b(self.state),
                         b(self.carry_in), b(self.carry_out))

    def chunk(self, t: int) -> "Signature":
        """The per-chunk form for ``t`` steps: input ``x``, output ``y`` and carries ``[t, B, ...]``."""
        c = lambda specs: tuple(s.chunk(t) for s in specs)  # noqa: E731
        return Signature(self.input.chunk(t, "x"), self.output.chunk(t, "y"), tuple(self.state),
                         c(self.carry_in), c(self.carry_out))


def specs_of(state: Mapping[str, "Tensor"]) -> list[TensorSpec]:
    """Specs of a state dict, in its order."""
    return [TensorSpec.of(k, v) for k, v in state.items()]


def zero_state(specs: Iterable[TensorSpec], device: "str | torch.device" = "cpu") -> State:
    """A fresh (all-zero) state for the given specs."""
    return {s.name: s.zeros(device) for s in specs}


def sub_state(state: Mapping[str, "Tensor"] | None, prefix: str) -> State | None:
    """Entries of ``state`` under ``prefix.``, with the prefix stripped (None stays None)."""
    if state is None:
        return None
    p = prefix + "."
    return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}


def prefixed(state: Mapping[str, "Tensor"], prefix: str) -> State:
    """``{k: v} -> {prefix.k: v}``."""
    return {f"{prefix}.{k}": v for k, v in state.items()}


def known_fields(cls: type, d: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``d`` as keyword arguments of dataclass ``cls``; ValueError naming unknown keys (``what``: for the message)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{what}: unknown {unknown}; expected some of {sorted(known)}")
    return dict(d)
