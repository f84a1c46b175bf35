"""Fixed message layouts: a list of TensorSpec packed, aligned, into one slot of bytes."""
from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import msgpack
import torch
from torch import Tensor

from bidl_models.specs import TensorSpec, torch_dtype

PAGE = 4096


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


class Layout:
    """Where each tensor of a message lives inside a slot.

    ``offsets[i]`` is the byte offset of ``specs[i]`` (aligned to ``align``); ``nbytes`` is the payload
    (sum of tensor sizes); ``slot_size`` the slot stride (page-aligned, at least one page).
    """

    def __init__(self, specs: Sequence[TensorSpec], align: int = 64):
        specs = tuple(s if isinstance(s, TensorSpec) else TensorSpec.from_dict(s) for s in specs)
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"layout: duplicate tensor names {dup}")
        self.specs: tuple[TensorSpec, ...] = specs
        self.names: tuple[str, ...] = tuple(names)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(tuple(s.shape) for s in specs)
        self.dtypes: tuple[torch.dtype, ...] = tuple(torch_dtype(s.dtype) for s in specs)
        self.sizes: tuple[int, ...] = tuple(s.nbytes for s in specs)
        offsets, off = [], 0
        for n in self.sizes:
            off = _round_up(off, align)
            offsets.append(off)
            off += n
        self.offsets: tuple[int, ...] = tuple(offsets)
        self.nbytes: int = sum(self.sizes)
        self.slot_size: int = max(PAGE, _round_up(off, PAGE))
        self.spec_dicts: list[dict] = [s.to_dict() for s in specs]
        self.fingerprint: int = zlib.crc32(msgpack.packb(self.spec_dicts))

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"Layout({len(self.specs)} tensors, {self.nbytes} B, slot {self.slot_size} B)"

    def views(self, slot_bytes: Tensor) -> dict[str, Tensor]:
        """Typed, shaped views of the tensors inside one slot (a uint8 tensor of ``slot_size``)."""
        out = {}
        for name, off, n, dt, shape in zip(self.names, self.offsets, self.sizes, self.dtypes, self.shapes):
            out[name] = slot_bytes[off:off + n].view(dt).view(shape)
        return out

    def byte_views(self, slot_bytes: Tensor) -> list[memoryview]:
        """Writable byte memoryviews of each tensor's region inside one slot."""
        return [memoryview(slot_bytes[off:off + n].numpy()) for off, n in zip(self.offsets, self.sizes)]

    def order(self, tensors: Sequence[Tensor] | Mapping[str, Tensor], channel: str) -> list[Tensor]:
        """Tensors in layout order after checking names, shapes and dtypes (ValueError naming the tensor)."""
        if isinstance(tensors, Mapping):
            if len(tensors) != len(self.names) or any(n not in tensors for n in self.names):
                missing = [n for n in self.names if n not in tensors]
                extra = sorted(set(tensors) - set(self.names))
                raise ValueError(f"channel {channel!r}: tensors differ from the layout; "
                                 f"missing {missing}, unexpected {extra}")
            seq = [tensors[n] for n in self.names]
        else:
            seq = list(tensors)
            if len(seq) != len(self.names):
                raise ValueError(f"channel {channel!r}: got {len(seq)} tensors, the layout has "
                                 f"{len(self.names)} ({list(self.names)[:4]}{'...' if len(self.names) > 4 else ''})")
        for name, shape, dt, t in zip(self.names, self.shapes, self.dtypes, seq):
            if not isinstance(t, Tensor):
                raise ValueError(f"channel {channel!r}: tensor {name!r} is a {type(t).__name__}, expected a torch.Tensor")
            if t.dtype != dt:
                raise ValueError(f"channel {channel!r}: tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}, "
                                 f"expected {str(dt).removeprefix('torch.')}")
            if tuple(t.shape) != shape:
                raise ValueError(f"channel {channel!r}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
        return seq
