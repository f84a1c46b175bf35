"""Event-gated data-plane channels between grid cells (Ray is only the control plane).

Receiver side (creates resources, returns a picklable descriptor)::

    rx = create_receiver("state[0,1]->[1,1]", specs, ChannelConfig(depth=2))
    desc = rx.descriptor                      # ship via Ray to the sender's process
    with rx.recv(timeout=10) as msg:          # blocks in the kernel until the sent event
        use(msg.meta["sample"], msg.tensors)  # zero-copy views (shm), valid until release
                                              # leaving the block releases: the credit goes back

Sender side::

    tx = attach_sender(desc)
    tx.send({"v": v, ...}, {"sample": 7, "slice": 1})   # waits for a credit, one copy_ per tensor
    views = tx.reserve(); compute_into(views); tx.commit({"sample": 8})   # or: write in place
    tx.send_control("stop"); tx.close()

Transports: ``shm`` (default, same node, zero copy), ``tcp`` (host copy, any node, crc32; page-locked
buffers with ``pin_memory`` where a GPU is present), ``cuda`` (same node, GPU -> GPU through CUDA IPC
on persistent slots, the receiver's stream waiting on the sender's event; ``cuda_memory='host'`` runs
the same protocol in host memory, for machines without a GPU).

Security: ``ChannelConfig(secret=new_secret())`` (one per run, handed to every endpoint through Ray)
keys an HMAC hello/welcome handshake (``auth``); a receiver accepts only the sender that proves it
holds the secret, drops and counts anything else (``stats.rejected``) and keeps listening.
"""
from . import cuda, shm, tcp  # noqa: F401  (register the transports)
from .base import (KINDS, ChannelDescriptor, Message, Receiver, Sender, Transport, attach_sender, create_receiver,
                   get_transport, register_transport, transports, wait_any)
from .channel_config import ChannelConfig, new_secret
from .errors import ChannelClosed, ChannelError, ChannelTimeout, ChecksumError, PeerDied
from .framing import Layout
from .shm import sweep_stale
from .stats import ChannelStats

__all__ = [
    "KINDS", "ChannelConfig", "ChannelDescriptor", "ChannelStats", "Layout", "Message", "Receiver", "Sender",
    "Transport", "attach_sender", "create_receiver", "get_transport", "register_transport", "transports",
    "wait_any", "sweep_stale", "new_secret",
    "ChannelError", "ChannelTimeout", "ChannelClosed", "PeerDied", "ChecksumError",
]
