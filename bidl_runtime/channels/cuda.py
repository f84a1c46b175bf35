"""Seam for a device-to-device transport (not implemented yet).

Plan: the receiver allocates ``depth`` slots in device memory and puts their CUDA IPC handles
(``storage._share_cuda_()``) plus an interprocess CUDA event per slot into the descriptor's
``address``; the sender opens the handles, writes with ``copy_`` on its stream, records the slot's
event and sends the usual sent event on a Unix socket (reuse ``shm``'s control path); the receiver
makes its stream wait on the event before use, and returns credits the same way. Registering it
under "cuda" keeps ``ChannelConfig(transport="cuda")`` a clear error until then.
"""
from __future__ import annotations

from .base import ChannelDescriptor, Receiver, Sender, Transport, register_transport
from .config import ChannelConfig
from .layout import Layout

_MSG = ("channel transport 'cuda' (device-to-device via CUDA IPC) is not implemented yet; "
        "use 'shm' on one node or 'tcp' across nodes")


class CudaIpcTransport(Transport):
    """Placeholder registry entry for the device-to-device transport."""

    name = "cuda"

    def create_receiver(self, name: str, layout: Layout, config: ChannelConfig) -> Receiver:
        raise NotImplementedError(_MSG)

    def attach_sender(self, desc: ChannelDescriptor, config: ChannelConfig) -> Sender:
        raise NotImplementedError(_MSG)


register_transport(CudaIpcTransport())
