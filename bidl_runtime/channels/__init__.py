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
from importlib import import_module
from typing import Any

# loaded on first use (PEP 562): ``channel_config`` (read by the runtime's settings, torch-free) alone
# does not import torch; the first name taken from here registers the transports
_EXPORTS = {
    "KINDS": "base", "ChannelDescriptor": "base", "Message": "base", "Receiver": "base", "Sender": "base",
    "Transport": "base", "attach_sender": "base", "create_receiver": "base", "get_transport": "base",
    "register_transport": "base", "transports": "base", "wait_any": "base",
    "ChannelConfig": "channel_config", "new_secret": "channel_config",
    "ChannelClosed": "errors", "ChannelError": "errors", "ChannelTimeout": "errors", "ChecksumError": "errors",
    "PeerDied": "errors",
    "Layout": "framing", "sweep_stale": "shm", "ChannelStats": "stats",
}
__all__ = sorted(_EXPORTS)
_TRANSPORTS = ("shm", "tcp", "cuda")


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for t in _TRANSPORTS:              # register the transports
        import_module(f"{__name__}.{t}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
