"""Same-node transport: slots in one shared-memory file, events over a Unix SOCK_SEQPACKET socket.

The receiver creates ``<shm_dir>/bidl-ch.<pid>.<token>.<name>`` (``depth`` page-aligned slots), maps it
and listens on an abstract-namespace Unix socket (no filesystem entry, so no file permissions: a
connection from another uid is dropped at once, and every one must pass the HMAC hello of ``auth``).
The sender maps the file, then unlinks it (both mappings stay valid; nothing is left in /dev/shm even
if a process is killed later), connects and says hello. Sent events and credits are msgpack datagrams on that socket; both ends
block in poll()/recv() in the kernel, and EOF on the socket is the peer-death signal.
Received tensors are views of the mapping: zero copy.
"""
from __future__ import annotations

import mmap
import os
import re
import socket
import time
import weakref

import torch
from torch import Tensor

from ._link import Link
from .base import OP_DATA, ChannelDescriptor, Receiver, Sender, Transport, _peercred, register_transport
from .channel_config import ChannelConfig
from .errors import ChannelError, ChannelTimeout, PeerDied
from .framing import Layout

PREFIX = "bidl-ch."


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname()


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _map(fd: int, size: int, populate: bool) -> mmap.mmap:
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def _drop_map(mm: mmap.mmap | None) -> None:
    """Never ``mm.close()``: tensors from ``torch.frombuffer`` reference the mmap object but hold no
    buffer export, so closing would unmap memory under live views (segfault). Dropping our reference
    unmaps once the last tensor handed out is freed."""


def _slot_bytes(mm: mmap.mmap, depth: int, slot_size: int) -> list[Tensor]:
    base = torch.frombuffer(mm, dtype=torch.uint8)
    return [base[i * slot_size:(i + 1) * slot_size] for i in range(depth)]


def sweep_stale(shm_dir: str = "/dev/shm") -> list[str]:
    """Remove slot files whose creating process is gone (left only if a receiver was killed before
    any sender attached). Returns the removed paths."""
    removed = []
    for fn in os.listdir(shm_dir):
        m = re.match(re.escape(PREFIX) + r"(\d+)\.", fn)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            _unlink_quiet(os.path.join(shm_dir, fn))
            removed.append(os.path.join(shm_dir, fn))
        except PermissionError:
            pass
    return removed


class ShmReceiver(Receiver):
    """Receiving end: owns the slot file (until the sender maps it) and the listening socket."""

    transport = "shm"
    packet = True

    def __init__(self, name: str, layout: Layout, config: ChannelConfig):
        super().__init__(name, layout, config)
        self._mm = None
        self._finalizer = weakref.finalize(self, lambda: None)
        self._slots = self._allocate()
        self._views = [layout.views(b) for b in self._slots]
        uds = f"{PREFIX}{os.getpid()}.{self.token}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind("\0" + uds)
        self._listen(listener)
        self.address.update({"uds": uds, "slot_size": layout.slot_size, "boot_id": _boot_id(),
                             "host": socket.gethostname(), "pid": os.getpid()})

    def _allocate(self) -> list[Tensor]:
        """The ``depth`` slots (byte tensors); fills ``address`` with what a sender needs to map them."""
        safe = re.sub(r"[^A-Za-z0-9_.,@=+-]", "_", self.name)[:80]
        self.path = os.path.join(self.config.shm_dir, f"{PREFIX}{os.getpid()}.{self.token}.{safe}")
        size = self.depth * self.layout.slot_size
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self._finalizer = weakref.finalize(self, _unlink_quiet, self.path)
        try:
            os.ftruncate(fd, size)
            self._mm = _map(fd, size, self.config.shm_populate)
        except BaseException:
            self._finalizer()
            raise
        finally:
            os.close(fd)
        self.address.update({"path": self.path, "size": size})
        return _slot_bytes(self._mm, self.depth, self.layout.slot_size)

    def _wrap(self, sock: socket.socket) -> Link:
        return Link(sock, self.name, "receiver", True, self.config.max_meta_bytes + 1024)

    def _peer_problem(self, sock: socket.socket) -> str | None:
        try:
            _, uid, _ = _peercred(sock)
        except OSError as e:
            return f"no peer credentials ({e})"
        return None if uid == os.getuid() else f"peer runs as uid {uid}, not {os.getuid()}"

    def buffer_range(self) -> tuple[int, int]:
        """(address, bytes) of the shared slots in this process: received tensors point inside it."""
        return (self._slots[0].data_ptr(), self.depth * self.layout.slot_size) if self._slots else (0, 0)

    def _on_connected(self) -> None:
        self._finalizer()  # the sender has mapped the file: the name is no longer needed

    def _free_resources(self) -> None:
        self._finalizer()
        self._slots = []
        _drop_map(self._mm)
        self._mm = None


class ShmSender(Sender):
    """Sending end: maps the receiver's slots, writes into them, signals over the Unix socket."""

    transport = "shm"

    def __init__(self, desc: ChannelDescriptor, config: ChannelConfig):
        super().__init__(desc, config)
        a = desc.address
        if a.get("boot_id") != _boot_id():
            raise ChannelError(self.name, f"{self.transport} channel was created on host {a.get('host')!r}, not on "
                                          f"this one ({socket.gethostname()!r}): use transport 'tcp' across nodes")
        self._mm = None
        self._slots = self._attach_slots(a)
        self._views = [self.layout.views(b) for b in self._slots]
        to = config.connect_timeout_s
        self._link = self._redial(time.monotonic() + to)
        self._hello(time.monotonic() + to, to)

    def _redial(self, deadline: float) -> Link:
        """A connection to the receiver's socket (the slots stay mapped)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        to = max(0.001, min(self.config.connect_timeout_s, deadline - time.monotonic()))
        sock.settimeout(to)
        try:
            sock.connect("\0" + self.descriptor.address["uds"])
        except (ConnectionRefusedError, FileNotFoundError) as e:
            sock.close()
            raise PeerDied(self.name, f"sender: receiver is not listening ({e.strerror})") from None
        except TimeoutError:
            sock.close()
            raise ChannelTimeout(self.name, "sender", "connecting to the receiver", to) from None
        return Link(sock, self.name, "sender", True, self.config.max_meta_bytes + 1024)

    def _attach_slots(self, a: dict) -> list[Tensor]:
        """Map the receiver's slots (byte tensors) from its descriptor's address."""
        config = self.config
        try:
            fd = os.open(a["path"], os.O_RDWR)
        except FileNotFoundError:
            raise PeerDied(self.name, f"sender: slot file {a['path']} is gone: the receiver closed or died, or "
                                      "another sender already attached to this descriptor") from None
        try:
            size = os.fstat(fd).st_size
            if size != a["size"] or a["slot_size"] != self.layout.slot_size:
                raise ChannelError(self.name, f"sender: slot file has {size} B, descriptor says {a['size']} B")
            self._mm = _map(fd, size, config.shm_populate)
        finally:
            os.close(fd)
        _unlink_quiet(a["path"])  # mapped on both ends now: drop the name so nothing can leak
        slots = _slot_bytes(self._mm, self.depth, self.layout.slot_size)
        if config.shm_prefault:
            # the first write to each shared page faults (MAP_POPULATE maps them for reading only):
            # ~50 ms per 12.5 MB slot here; pay it now, at set-up, not on the first sample
            for b in slots:
                b.zero_()
        return slots

    def _views_for(self, slot: int) -> dict[str, Tensor]:
        return self._views[slot]

    def _publish(self, slot: int, seq: int, meta: dict, deadline: float, to: float) -> None:
        self._send_msg([OP_DATA, seq, slot, time.monotonic_ns(), meta], deadline, to, "sending the sent event")

    def slot_pointers(self) -> list[int]:
        """Data pointers of the slots in this process (for tests and debugging)."""
        return [b.data_ptr() for b in self._slots]

    def _free_resources(self) -> None:
        self._views = []
        self._slots = []
        _drop_map(self._mm)
        self._mm = None


class ShmTransport(Transport):
    """Same-node shared memory, zero copy on the receiving side (the default)."""

    name = "shm"

    def create_receiver(self, name: str, layout: Layout, config: ChannelConfig) -> ShmReceiver:
        return ShmReceiver(name, layout, config)

    def attach_sender(self, desc: ChannelDescriptor, config: ChannelConfig) -> ShmSender:
        return ShmSender(desc, config)


register_transport(ShmTransport())
