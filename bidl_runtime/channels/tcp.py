"""Cross-node transport: host copy over one TCP connection per channel, same credit semantics.

Frames on the stream: u32 length + msgpack envelope, then (data frames) the payload bytes of each
tensor in layout order. The receiver listens on its node's address only (Ray's node IP, loopback in
the embedded cluster), never on all interfaces unless ``tcp_bind_host`` says so; the first frame of
every connection must be the HMAC hello of ``auth``. A connection still in its hello counts against the
budget of its source: its remote host, or for a peer on this machine (found in the kernel's socket table,
``/proc/net/tcp``) its user; another user's is dropped at once (``tcp_same_user_only``). Data envelope: ``["D", seq, slot, t_wall_ns, meta, specs, nbytes, crc32, epoch]``;
the receiver checks the specs against its layout and the crc32 of the payload (ChecksumError on a
mismatch; the slot goes back to the sender and the stream stays usable). Credits and the close
message flow back on the same connection. Payload bytes land directly in the receiver's slot buffers
(``recv_into``); ``send`` writes straight from the caller's tensors (no staging copy).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
import zlib

import torch
from torch import Tensor

from . import tls
from ._link import Link
from .base import OP_DATA, ChannelDescriptor, Receiver, Sender, Transport, register_transport
from .channel_config import ChannelConfig
from .errors import ChannelError, ChannelTimeout, ChecksumError, PeerDied
from .framing import Layout


def default_host() -> str:
    """This node's address for peers: Ray's node IP when Ray is initialised here, else loopback."""
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                return ray.util.get_node_ip_address()
        except Exception:
            pass
    return "127.0.0.1"


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _proc_forms(addr: tuple) -> list[str]:
    """How ``/proc/net/tcp{,6}`` write the socket address ``addr`` (an IPv4 one also as IPv4-mapped IPv6)."""
    ip = ipaddress.ip_address(str(addr[0]).split("%")[0])
    port = int(addr[1])
    forms = []
    if ip.version == 4:
        forms.append(f"{int.from_bytes(ip.packed, 'little'):08X}:{port:04X}")
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    words = "".join(f"{int.from_bytes(ip.packed[i:i + 4], 'little'):08X}" for i in range(0, 16, 4))
    return forms + [f"{words}:{port:04X}"]


def local_peer_uids(conns: list[tuple[tuple, tuple]]) -> list[int | None]:
    """For connections given as ``(peer address, our address)``: the uid owning the peer's socket when
    that socket is on this machine (in this network namespace), else None (a remote peer)."""
    want: dict[tuple[str, str], int] = {}
    for i, (peer, ours) in enumerate(conns):
        try:
            for key in zip(_proc_forms(peer), _proc_forms(ours)):
                want[key] = i
        except (ValueError, IndexError, TypeError):
            continue
    out: list[int | None] = [None] * len(conns)
    if not want:
        return out
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            i = want.get((f[1], f[2])) if len(f) > 7 else None
            if i is not None:
                out[i] = int(f[7])
    return out


def crc32_of(buffers: list[memoryview]) -> int:
    """crc32 over the concatenation of ``buffers``."""
    c = 0
    for b in buffers:
        c = zlib.crc32(b, c)
    return c


def _bytes_of(t: Tensor) -> memoryview:
    """A byte view of a tensor's data (copies only if not a contiguous CPU tensor)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def host_buffer(nbytes: int, pin: bool) -> Tensor:
    """A zeroed host byte buffer (pages touched now); page-locked when ``pin`` and a GPU is present,
    so copies between it and the GPU run at full speed (cross-node edges of GPU cells)."""
    buf = torch.zeros(nbytes, dtype=torch.uint8)
    return buf.pin_memory() if pin and torch.cuda.is_available() else buf


def _max_msg(layout: Layout, config: ChannelConfig) -> int:
    return config.max_meta_bytes + len(layout.spec_dicts) * 256 + 4096


class TcpReceiver(Receiver):
    """Receiving end: ``depth`` slot buffers in this process, a listening TCP socket."""

    transport = "tcp"

    def __init__(self, name: str, layout: Layout, config: ChannelConfig):
        super().__init__(name, layout, config)
        self._buf = host_buffer(self.depth * layout.slot_size, config.pin_memory)
        slots = [self._buf[i * layout.slot_size:(i + 1) * layout.slot_size] for i in range(self.depth)]
        self._views = [layout.views(b) for b in slots]
        self._bytes = [layout.byte_views(b) for b in slots]
        if config.tls:
            tls.server_context()   # the files are checked here, in the receiver's process (one line if not)
        host = config.tcp_host or default_host()
        bind = config.tcp_bind_host or host
        listener = socket.socket(_family(bind), socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, config.tcp_rcvbuf)
        listener.bind((bind, 0))
        self._listen(listener)
        self.address = {"host": host, "port": listener.getsockname()[1]}

    def _classify(self, fresh: list) -> dict[int, str]:
        """Sources for the budgets: a peer on this machine counts as its user (found in the kernel's socket
        table), and is dropped at once if that is another user (``tcp_same_user_only``); a remote peer
        counts as its host."""
        conns = []
        for p in fresh:
            try:
                conns.append((p.addr, p.sock.getsockname()))
            except OSError:
                conns.append(((), ()))
        me, refused = os.getuid(), {}
        for p, uid in zip(fresh, local_peer_uids(conns)):
            if uid is None:
                p.source = f"host {p.addr[0]}"
            elif uid != me and self.config.tcp_same_user_only:
                refused[p.order] = f"a process of uid {uid} on this machine (the run's user is uid {me})"
            else:
                p.source = f"uid {uid} on this machine"
        return refused

    def _secure(self, sock: socket.socket) -> socket.socket:
        return tls.wrap_server(sock) if self.config.tls else sock

    def _wrap(self, sock: socket.socket) -> Link:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return Link(sock, self.name, "receiver", False, _max_msg(self.layout, self.config), self.config.frame_timeout_s)

    def _clock_ns(self) -> int:
        return time.time_ns()

    def _read_payload(self, slot: int, msg: list, deadline: float, timeout_s: float) -> None:
        _, seq, _, _, meta, specs, nbytes, crc = msg[:8]
        if nbytes != self.layout.nbytes or specs != self.layout.spec_dicts:
            self._link._broken = "envelope specs differ from the layout"
            raise ChannelError(self.name, f"receiver: message {seq}: envelope specs/size ({nbytes} B) differ from "
                                          f"the channel layout ({self.layout.nbytes} B)")
        views = self._bytes[slot]
        # the header is in: the payload must be read whatever the caller's (poll) timeout was
        self._link.recv_into_views(views, self._link.frame_deadline(deadline),
                                   max(timeout_s, self.config.frame_timeout_s), f"the payload of message {seq}")
        if crc is not None:
            got = crc32_of(views)
            if got != crc:
                self._held.discard(slot)
                self._release_unheld(slot)
                raise ChecksumError(self.name, f"receiver: payload of message {seq} (sample {meta.get('sample')!r}, "
                                               f"slice {meta.get('slice')!r}) fails its crc32 check: computed "
                                               f"{got:#010x}, envelope says {crc:#010x}")

    def _release_unheld(self, slot: int) -> None:
        self._held.add(slot)
        self._release(slot)


class TcpSender(Sender):
    """Sending end: one TCP connection; payload written from the tensors (``send``) or from a staging
    buffer (``reserve``/``commit``)."""

    transport = "tcp"

    def __init__(self, desc: ChannelDescriptor, config: ChannelConfig):
        super().__init__(desc, config)
        to = config.connect_timeout_s
        self._link = self._redial(time.monotonic() + to)
        self._staging = host_buffer(self.layout.slot_size, config.pin_memory)
        self._staging_views = self.layout.views(self._staging)
        self._staging_bytes = self.layout.byte_views(self._staging)
        if config.tls:
            self._hello_due = True   # the handshake needs the receiver reading: with the first message
        else:
            self._hello(time.monotonic() + to, to)

    def _redial(self, deadline: float) -> Link:
        """A connection to the receiver's address (PeerDied: refused; ChannelTimeout: no answer)."""
        host, port = self.descriptor.address["host"], self.descriptor.address["port"]
        config = self.config
        to = max(0.001, min(config.connect_timeout_s, deadline - time.monotonic()))
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, config.tcp_sndbuf)
        sock.settimeout(to)
        try:
            sock.connect((host, port))
        except ConnectionRefusedError as e:
            sock.close()
            raise PeerDied(self.name, f"sender: receiver at {host}:{port} is not listening ({e.strerror})") from None
        except TimeoutError:
            sock.close()
            raise ChannelTimeout(self.name, "sender", f"connecting to {host}:{port}", to) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if config.tls:
            sock = tls.wrap_client(sock, host)
        return Link(sock, self.name, "sender", False, _max_msg(self.layout, config), config.frame_timeout_s)

    def _clock_ns(self) -> int:
        return time.time_ns()

    def _views_for(self, slot: int) -> dict[str, Tensor]:
        return self._staging_views

    def _write(self, slot: int, seq: int, meta: dict, bufs: list[memoryview], deadline: float, to: float) -> None:
        crc = crc32_of(bufs) if self.config.tcp_checksum else None
        env = [OP_DATA, seq, slot, time.time_ns(), meta, self.layout.spec_dicts, self.layout.nbytes, crc]
        self._send_msg(env, deadline, to, f"sending message {seq}", payload=bufs)

    def _publish(self, slot: int, seq: int, meta: dict, deadline: float, to: float) -> None:
        self._write(slot, seq, meta, self._staging_bytes, deadline, to)

    def _send_tensors(self, slot: int, seq: int, tensors: list[Tensor], meta: dict, deadline: float,
                      to: float) -> None:
        self._write(slot, seq, meta, [_bytes_of(t) for t in tensors], deadline, to)


class TcpTransport(Transport):
    """Host copy over TCP (works across nodes), crc32-checked."""

    name = "tcp"

    def create_receiver(self, name: str, layout: Layout, config: ChannelConfig) -> TcpReceiver:
        return TcpReceiver(name, layout, config)

    def attach_sender(self, desc: ChannelDescriptor, config: ChannelConfig) -> TcpSender:
        return TcpSender(desc, config)


register_transport(TcpTransport())
