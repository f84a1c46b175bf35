"""Same-node GPU -> GPU transport: slots in the receiver's GPU memory, mapped once by the sender
through CUDA IPC; the shm transport's control socket, credits and hello.

The receiver allocates its ``depth`` slots as one persistent device buffer and exports it with
torch's CUDA tensor reduction (a ``cudaIpcMemHandle`` and offsets); the sender maps it once at
attach (``rebuild``), so a message costs one device-to-device ``copy_`` per tensor and a datagram.
Ordering without a host round trip (``ChannelConfig.cuda_ipc_events``): after its copies the sender
records an interprocess CUDA event and sends its IPC handle with the sent event; the receiver makes
its current stream wait on it (``cudaStreamWaitEvent``), so work it enqueues after ``recv`` reads
complete slot contents. Without events the sender synchronises its stream before publishing.
Before a credit goes back, the releasing thread's stream is synchronised: the sender may overwrite
the slot as soon as it holds the credit (consumers that read on another stream synchronise it
before releasing, as the cuda device context does).

``ChannelConfig.cuda_memory='host'``: the same transport with its slots in shared host memory (the
shm mapping) and no CUDA calls, so that the whole protocol and the planner's choice run on machines
without a GPU (tests, ``--smoke`` benchmarks).

The sender must see the receiver's GPU (same physical device, matched by UUID across the two
processes' ``CUDA_VISIBLE_DEVICES``); otherwise attaching fails with a ChannelError naming the fix.
"""
from __future__ import annotations

import pickle
import time
import socket
from typing import Any, Optional

import torch
from torch import Tensor

from .base import OP_DATA, ChannelDescriptor, Transport, register_transport
from .channel_config import ChannelConfig
from .errors import ChannelError
from .framing import Layout
from .shm import ShmReceiver, ShmSender


def gpu_uuid(index: int) -> str:
    """The UUID of visible GPU ``index`` (the same string in every process that sees that GPU)."""
    return str(torch.cuda.get_device_properties(index).uuid)


def local_index(uuid: str) -> Optional[int]:
    """This process's index of the GPU with ``uuid`` (None: not visible here)."""
    for i in range(torch.cuda.device_count()):
        if gpu_uuid(i) == uuid:
            return i
    return None


class CudaReceiver(ShmReceiver):
    """Receiving end: slots in this process's current GPU (or shared host memory, ``cuda_memory='host'``)."""

    transport = "cuda"

    def _allocate(self) -> list[Tensor]:
        if self.config.cuda_memory == "host":
            self.address["memory"] = "host"
            return super()._allocate()
        from torch.multiprocessing.reductions import reduce_tensor
        self.device = torch.device("cuda", torch.cuda.current_device())
        size = self.depth * self.layout.slot_size
        self._buffer = torch.zeros(size, dtype=torch.uint8, device=self.device)   # mapped once, kept
        rebuild, args = reduce_tensor(self._buffer)
        self.address.update({"memory": "cuda", "size": size, "gpu": gpu_uuid(self.device.index),
                             "ipc": pickle.dumps((rebuild, args))})
        self._events: dict[bytes, Any] = {}
        return [self._buffer[i * self.layout.slot_size:(i + 1) * self.layout.slot_size] for i in range(self.depth)]

    @property
    def on_gpu(self) -> bool:
        return self.address.get("memory") == "cuda"

    def _read_payload(self, slot: int, msg: list, deadline: float, timeout_s: float) -> None:
        handle = msg[5] if len(msg) > 5 else None
        if handle is None or not self.on_gpu:
            return
        ev = self._events.get(handle)
        if ev is None:
            ev = self._events[handle] = torch.cuda.Event.from_ipc_handle(self.device, handle)
        torch.cuda.current_stream(self.device).wait_event(ev)

    def _release(self, slot: int) -> None:
        if self.on_gpu and slot in self._held and not self._closed:
            torch.cuda.current_stream(self.device).synchronize()   # reads of the slot are done
        super()._release(slot)

    def _on_connected(self) -> None:
        if not self.on_gpu:
            super()._on_connected()

    def _free_resources(self) -> None:
        if self.on_gpu:
            self._slots = []
            self._events = {}
            self._buffer = None
            return
        super()._free_resources()


class CudaSender(ShmSender):
    """Sending end: maps the receiver's GPU slots once (CUDA IPC), copies device to device."""

    transport = "cuda"

    def _attach_slots(self, a: dict) -> list[Tensor]:
        if a.get("memory") != "cuda":
            self._gpu = False
            return super()._attach_slots(a)
        self._gpu = True
        if not torch.cuda.is_available():
            raise ChannelError(self.name, "sender: the receiver's slots are in GPU memory but this process sees "
                                          "no GPU; use transport 'shm'")
        index = local_index(a["gpu"])
        if index is None:
            raise ChannelError(self.name, f"sender: the receiver's GPU {a['gpu']} is not visible to this process "
                                          f"(host {socket.gethostname()!r}); use transport 'shm' or 'tcp'")
        self.device = torch.device("cuda", index)
        rebuild, args = pickle.loads(a["ipc"])
        args = list(args)
        args[6] = index                # the storage's device, as this process numbers it
        with torch.cuda.device(index):
            buf = rebuild(*args)
            # one interprocess event per slot, created on the slots' GPU; the receiver opens each handle once
            self._events = [torch.cuda.Event(interprocess=True) for _ in range(self.depth)] \
                if self.config.cuda_ipc_events else []
            self._handles = [bytes(e.ipc_handle()) for e in self._events]
        if buf.numel() != a["size"] or a["slot_size"] != self.layout.slot_size:
            raise ChannelError(self.name, f"sender: mapped {buf.numel()} B of GPU slots, descriptor says {a['size']} B")
        self._buffer = buf
        n = self.layout.slot_size
        return [buf[i * n:(i + 1) * n] for i in range(self.depth)]

    def _publish(self, slot: int, seq: int, meta: dict, deadline: float, to: float) -> None:
        handle = None
        if self._gpu:
            stream = torch.cuda.current_stream(self.device)
            if self._events:
                self._events[slot].record(stream)
                handle = self._handles[slot]
            else:
                stream.synchronize()
        self._send_msg([OP_DATA, seq, slot, time.monotonic_ns(), meta, handle], deadline, to,
                       "sending the sent event")

    def _free_resources(self) -> None:
        if getattr(self, "_gpu", False):
            self._views = []
            self._slots = []
            self._events = []
            self._buffer = None
            return
        super()._free_resources()


class CudaTransport(Transport):
    """Same-node GPU memory through CUDA IPC (``cuda_memory='host'``: shared host memory stand-in)."""

    name = "cuda"

    def create_receiver(self, name: str, layout: Layout, config: ChannelConfig) -> CudaReceiver:
        return CudaReceiver(name, layout, config)

    def attach_sender(self, desc: ChannelDescriptor, config: ChannelConfig) -> CudaSender:
        return CudaSender(desc, config)


register_transport(CudaTransport())
