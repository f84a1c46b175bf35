"""The transport-independent channel: descriptors, credits, messages, the transport registry.

One channel = one sender and one receiver (a grid edge). The receiver owns ``depth`` slots, each able
to hold one message of the channel's fixed layout. The sender starts with ``depth`` credits; it writes
only into a slot it holds a credit for, then publishes the "sent" event (a small control message with
the slot index and the msgpack metadata). The receiver blocks in the kernel until a sent event
arrives, hands out views of the slot, and returns the credit when the user calls ``release()``.

Transports (see ``Transport``) differ only in where slots live and how bytes get there:
``shm`` maps the same memory in both processes (zero copy for the receiver), ``tcp`` streams the
payload into receiver-side slot buffers.

Peers authenticate first (``auth``: an HMAC hello keyed by the run's secret, answered by an HMAC
welcome). Until a connection has sent a valid hello the receiver reads at most ``auth.HELLO_MAX``
bytes of it, for at most ``hello_timeout_s``, many such connections in parallel (so a silent or
slow intruder delays nobody); anything else (garbage, an oversized length prefix, half a frame, a
wrong secret, another uid on shm, or on tcp from this machine) is dropped, logged and counted
(``stats.rejected``), and the receiver keeps listening. Once the expected sender is in, the listener
closes. Every decode or protocol error after that is a ``ChannelError``.

Grid epochs (``ChannelConfig.epoch``): the hello carries the sender's epoch and every data and
control message ends with it; a receiver refuses a hello of another epoch than its own and drops
(counting ``stats.fenced``, returning the slot's credit) any message of an older one, e.g. after
``fence(epoch)`` raised its epoch. A cell fenced off with a lost host can so never deliver into a
grid that was re-placed without it.

Floods of unproven connections cannot starve the sender. Each round reads the pending connections
first (in accept order: a hello that has arrived wins before any newcomer is let in), then accepts at
most ``accept_batch`` new ones, each read at once (a sender's hello usually arrives with its
connection: it is proven on the spot). Unproven connections are held within budgets: at most
``max_pending_per_source`` from one source (a remote host, or one local user) and ``max_pending`` in
all. Over a budget, the victim is the source's (or the busiest source's) oldest connection past
``hello_grace_s``, else its newest: a connection is never evicted before it had the grace period to
say hello, a flood from one source only evicts its own connections, and a proven sender is handed
over at once, never evicted. Running out of file descriptors evicts the same way; the listener stays
open until the sender is in.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import select
import socket
import ssl
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import torch
from torch import Tensor

from bidl_models.specs import TensorSpec

from . import auth, tls
from ._link import LEN, Link, decode
from .channel_config import ChannelConfig, new_secret
from .errors import ChannelClosed, ChannelError, ChannelTimeout, PeerDied
from .framing import Layout
from .stats import ChannelStats

KINDS = ("data", "stop", "error")

# control-message opcodes (first element of every msgpack list on the control socket)
OP_HELLO, OP_DATA, OP_CONTROL, OP_END = auth.OP_HELLO, "D", "C", "E"   # sender -> receiver
OP_WELCOME, OP_CREDIT, OP_CLOSED = auth.OP_WELCOME, "K", "X"            # receiver -> sender
_MALFORMED = (TypeError, ValueError, IndexError, KeyError, AttributeError)  # a message of the wrong shape
LOG_REJECTIONS = 20   # per receiver: log this many dropped connections, then count them only

log = logging.getLogger("bidl_runtime.channels")


@dataclass(frozen=True, eq=False)
class ChannelDescriptor:
    """Picklable address of a receiver: created by the receiver, shipped (e.g. via Ray) to the sender.

    ``address`` is transport-specific and holds plain values only (shm: file path, socket name;
    tcp: host, port). ``config`` is the receiver's config (with the secret that keys the handshake);
    the sender uses it unless given its own. Ship it only over an authenticated control plane (Ray).
    """

    name: str
    transport: str
    specs: tuple[TensorSpec, ...]
    depth: int
    token: str
    address: dict = field(default_factory=dict)
    config: ChannelConfig = field(default_factory=ChannelConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "transport": self.transport, "specs": [s.to_dict() for s in self.specs],
                "depth": self.depth, "token": self.token, "address": dict(self.address),
                "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ChannelDescriptor":
        return cls(d["name"], d["transport"], tuple(TensorSpec.from_dict(s) for s in d["specs"]), int(d["depth"]),
                   d["token"], dict(d["address"]), ChannelConfig.from_dict(d["config"]))


def _make_meta(meta: Mapping[str, Any] | None, kind: str, channel: str, limit: int) -> dict[str, Any]:
    """Metadata dict with ``kind`` set; ValueError if the kind is unknown, it is not msgpack-able, or too big."""
    m = {} if meta is None else dict(meta)
    m.setdefault("kind", kind)
    if m["kind"] not in KINDS:
        raise ValueError(f"channel {channel!r}: metadata kind {m['kind']!r}: expected one of {list(KINDS)}")
    try:
        n = len(msgpack.packb(m, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"channel {channel!r}: metadata is not msgpack-serialisable ({e})") from None
    if n > limit:
        raise ValueError(f"channel {channel!r}: metadata of {n} B exceeds the limit of {limit} B "
                         "(ChannelConfig.max_meta_bytes): keep metadata small")
    return m


def _readable(sock: Any) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(0))


def _timeout(t: float | None, default: float) -> float:
    t = default if t is None else float(t)
    if not t > 0:
        raise ValueError(f"timeout={t!r}: must be > 0")
    return t


def _check_meta(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise TypeError(f"metadata is a {type(meta).__name__}, expected a map")


def _peer_name(addr: Any, sock: socket.socket) -> str:
    """A readable name of an accepted connection's peer (address, or uid/pid on a Unix socket)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}:{addr[1]}"
    try:
        pid, uid, _ = _peercred(sock)
        return f"local pid {pid} (uid {uid})"
    except OSError:
        return "a local process"


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of a Unix-socket peer (SO_PEERCRED)."""
    return struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


class _Drop(Exception):
    """A pending connection broke the hello rules; ``str`` says how."""


class _Pending:
    """An accepted connection that has not completed a valid hello: at most ``auth.HELLO_MAX`` bytes of
    it are read (non-blocking, as they arrive) before its deadline. ``source``: the budget it counts
    against (set when it is admitted)."""

    __slots__ = ("sock", "peer", "addr", "t0", "deadline", "order", "source", "head", "body", "need")

    def __init__(self, sock: socket.socket, peer: str, addr: Any, t0: float, deadline: float, order: int):
        self.sock, self.peer, self.addr, self.t0, self.deadline, self.order = sock, peer, addr, t0, deadline, order
        self.source = "local"
        self.head = bytearray()
        self.body: bytearray | None = None
        self.need = -1 if isinstance(sock, ssl.SSLSocket) else 0   # -1: the TLS handshake comes first

    def read(self, packet: bool) -> bytes | None:
        """The complete hello body once it is in (None: more to come). _Drop on EOF, an oversized or
        empty frame; BlockingIOError when nothing is readable."""
        try:
            return self._read(packet)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise BlockingIOError from None     # TLS: a record (or the handshake) is not complete yet
        except ssl.SSLError as e:
            raise _Drop(f"TLS failed ({e.reason or e})") from None

    def _read(self, packet: bool) -> bytes | None:
        if isinstance(self.sock, ssl.SSLSocket) and self.need == -1:
            self.sock.do_handshake()            # the peer's certificate is checked here
            self.need = 0
        if packet:  # one datagram = one message; a larger one is cut to HELLO_MAX + 1 and refused
            data = self.sock.recv(auth.HELLO_MAX + 1)
            if not data:
                raise _Drop("closed without a hello")
            if len(data) > auth.HELLO_MAX:
                raise _Drop(f"first message larger than {auth.HELLO_MAX} B")
            return data
        while self.body is None:
            chunk = self.sock.recv(LEN.size - len(self.head))
            if not chunk:
                raise _Drop("closed without a hello" if not self.head else "closed in the middle of a frame")
            self.head += chunk
            if len(self.head) == LEN.size:
                (n,) = LEN.unpack(self.head)
                if n == 0 or n > auth.HELLO_MAX:
                    raise _Drop(f"first frame announces {n} B (a hello is 1..{auth.HELLO_MAX} B)")
                self.body, self.need = bytearray(), n
        while len(self.body) < self.need:
            chunk = self.sock.recv(self.need - len(self.body))
            if not chunk:
                raise _Drop("closed in the middle of a frame")
            self.body += chunk
        return bytes(self.body)


class _NoPickle:
    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} is bound to its process: ship its .descriptor (receiver) "
                        "and attach_sender() in the other process instead")


class Message:
    """A received message: ``meta`` (dict with at least ``kind``) and ``tensors`` (name -> tensor).

    For shm the tensors are zero-copy views of the shared slot, for tcp views of the receiver's slot
    buffer; either way they stay valid until ``release()`` (or leaving a ``with`` block), after which
    the sender may overwrite them. Control messages ('stop'/'error' without payload) have no tensors.
    """

    __slots__ = ("meta", "tensors", "seq", "hop_s", "_rx", "_slot")

    def __init__(self, meta: dict, tensors: dict[str, Tensor], seq: int, rx: "Receiver", slot: int | None,
                 hop_s: float | None = None):
        self.meta, self.tensors, self.seq, self.hop_s = meta, tensors, seq, hop_s
        self._rx, self._slot = rx, slot

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "data")

    @property
    def is_data(self) -> bool:
        return self._slot is not None

    @property
    def released(self) -> bool:
        return self._slot is None

    def release(self) -> None:
        """Give the slot back to the sender (idempotent). The tensors must not be used afterwards."""
        slot, self._slot = self._slot, None
        if slot is not None:
            self._rx._release(slot)

    def copy(self) -> dict[str, Tensor]:
        """Private copies of the tensors (still valid after release)."""
        return {k: v.clone() for k, v in self.tensors.items()}

    def __enter__(self) -> "Message":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Message(seq={self.seq}, meta={self.meta}, tensors={list(self.tensors)})"


class Receiver(_NoPickle, ABC):
    """Receiving end of a channel: owns the slots and the listening socket.

    Subclasses call ``_listen(sock)`` with their bound socket, set ``_views`` (per slot: name -> tensor
    view) and ``address``, implement ``_wrap`` and optionally ``_peer_problem``, ``_read_payload`` and
    ``_free_resources``. Use each endpoint from one thread, except ``Message.release()``, which any
    thread may call. Without a ``config.secret`` the receiver makes a random one (in its descriptor).
    """

    transport = "?"
    packet = False  #: the control socket keeps message boundaries (SOCK_SEQPACKET) instead of u32 framing

    def __init__(self, name: str, layout: Layout, config: ChannelConfig):
        if config.secret is None:
            config = config.replace(secret=new_secret())
        self.name, self.layout, self.config = name, layout, config
        self.depth = int(config.depth)
        self.token = secrets.token_hex(8)
        self.stats = ChannelStats(name, "receiver", self.transport, config.stats_window)
        self.address: dict[str, Any] = {}
        self.peer: str | None = None   # the authenticated sender's address, once connected
        self._listener: socket.socket | None = None
        self._poller: Any = None       # epoll over the listener and the connections still in their hello
        self._pending: dict[int, _Pending] = {}
        self._accepted = 0
        self._views: list[dict[str, Tensor]] = []
        self._link: Link | None = None
        self._held: set[int] = set()
        self._next_seq = 0
        self._sender_closed = False
        self._closed = False

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _wrap(self, sock: socket.socket) -> Link:
        """The Link over an accepted, authenticated connection."""

    def _peer_problem(self, sock: socket.socket) -> str | None:
        """Why a freshly accepted connection must be dropped before it says anything (None: fine)."""
        return None

    def _classify(self, fresh: list["_Pending"]) -> dict[int, str]:
        """Set the ``source`` of connections about to be held unproven; returns ``{order: why}`` of those
        to drop at once instead. Default: the peer's host (or ``local`` on a Unix socket)."""
        for p in fresh:
            p.source = p.addr[0] if isinstance(p.addr, tuple) and p.addr else "local"
        return {}

    def _secure(self, sock: socket.socket) -> socket.socket:
        """An accepted connection as the transport reads it (tcp with TLS: wrapped, handshake pending)."""
        return sock

    def _read_payload(self, slot: int, msg: list, deadline: float, timeout_s: float) -> None:
        """Bring the payload of a data message into ``slot`` (nothing to do for shared memory)."""

    def _clock_ns(self) -> int:
        return time.monotonic_ns()

    def _free_resources(self) -> None:
        """Release transport resources (unlink files, ...)."""

    # -- public -------------------------------------------------------------------------------
    @property
    def descriptor(self) -> ChannelDescriptor:
        """What the sender needs to attach (picklable)."""
        return ChannelDescriptor(self.name, self.transport, self.layout.specs, self.depth, self.token,
                                 dict(self.address), self.config)

    @property
    def connected(self) -> bool:
        return self._link is not None

    def fileno(self) -> int:
        """An fd that polls readable when ``recv`` has something to do (for ``wait_any``): the connection,
        or before it is established an epoll fd over the listener and the connections in their hello."""
        self._check_open()
        return self._link.fileno() if self._link is not None else self._poller.fileno()

    def recv(self, timeout: float | None = None) -> Message:
        """Block (in the kernel) until the next message's sent event; return it.

        ``release()`` of a received message may be called from another thread than ``recv``.
        Raises ChannelTimeout after ``timeout`` (default ``config.recv_timeout_s``), ChannelClosed once
        the sender closed and everything it sent was received, PeerDied if the sender's process went away.
        """
        self._check_open()
        to = _timeout(timeout, self.config.recv_timeout_s)
        t0 = time.monotonic()
        deadline = t0 + to
        if self._link is None:
            self._connect(deadline, to)
        if self._sender_closed:
            raise ChannelClosed(self.name, f"sender closed the channel after {self.stats.messages} messages")
        while True:
            msg = self._link.recv(deadline, to, "the next message's sent event")
            t1 = time.monotonic()
            if msg is None:
                raise PeerDied(self.name, f"receiver: sender process is gone (EOF on the control socket) after "
                                          f"{self.stats.messages} messages")
            try:
                out = self._dispatch(msg, t0, t1, deadline, to)
            except ChannelError:
                raise
            except _MALFORMED as e:
                if not self._link.packet:
                    self._link._broken = "a malformed message"  # payload length unknown: framing is lost
                raise ChannelError(self.name, f"receiver: protocol error: malformed message "
                                              f"({type(e).__name__}: {e})") from None
            if out is not None:
                return out

    def fence(self, epoch: int) -> None:
        """Raise this receiver's grid epoch: messages of older epochs are dropped from now on (counted in
        ``stats.fenced``; their slots' credits go back so a stale sender cannot wedge the channel)."""
        if epoch < self.config.epoch:
            raise ValueError(f"channel {self.name!r}: fence({epoch}): the epoch is {self.config.epoch} already")
        self.config = self.config.replace(epoch=epoch)

    def _stale(self, epoch: Any, what: str) -> bool:
        """Whether a message of ``epoch`` is fenced (counted and logged once)."""
        if epoch == self.config.epoch:
            return False
        self.stats.fenced += 1
        if self.stats.fenced == 1:
            log.warning("channel %r: dropped %s of grid epoch %r (this receiver's epoch is %d): fenced",
                        self.name, what, epoch, self.config.epoch)
        return True

    def _dispatch(self, msg: Any, t0: float, t1: float, deadline: float, to: float) -> Message | None:
        """The message ``msg`` announces (None: it was of another grid epoch, dropped)."""
        if not isinstance(msg, list) or not msg:
            raise ValueError(f"expected a non-empty list, got {type(msg).__name__}")
        op = msg[0]
        if op == OP_DATA:
            _, seq, slot, t_sent, meta = msg[:5]
            _check_meta(meta)
            self._check_seq(seq)
            if not (isinstance(slot, int) and 0 <= slot < self.depth) or slot in self._held:
                raise ChannelError(self.name, f"receiver: protocol error: data in slot {slot!r} which the receiver "
                                              f"still holds or does not have (held {sorted(self._held)}, depth "
                                              f"{self.depth})")
            self._held.add(slot)
            try:
                self._read_payload(slot, msg, deadline, to)
            except BaseException:
                self._held.discard(slot)
                raise
            if self._stale(msg[-1], f"message {seq} (sample {meta.get('sample')!r})"):
                self._release(slot)          # its credit goes back; the payload is never handed out
                return None
            t2 = time.monotonic()
            lat = max(0.0, (self._clock_ns() - int(t_sent)) * 1e-9)
            self.stats.record(self.layout.nbytes, t1 - t0, t2 - t1, hop_s=lat)
            return Message(meta, dict(self._views[slot]), seq, self, slot, lat)
        if op == OP_CONTROL:
            _, seq, t_sent, meta = msg[:4]
            _check_meta(meta)
            self._check_seq(seq)
            if self._stale(msg[-1] if len(msg) > 4 else None, f"a {meta.get('kind')!r} message"):
                return None
            self.stats.record(0, t1 - t0, 0.0, None, control=True)
            return Message(meta, {}, seq, self, None)
        if op == OP_END:
            self._sender_closed = True
            raise ChannelClosed(self.name, f"sender closed the channel after {self.stats.messages} messages")
        raise ChannelError(self.name, f"receiver: protocol error: unexpected opcode {op!r}")

    def recv_copy(self, timeout: float | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``recv`` + private copies of the tensors + ``release``: returns ``(meta, tensors)``."""
        msg = self.recv(timeout)
        try:
            return msg.meta, msg.copy()
        finally:
            msg.release()

    def recv_into(self, out: Mapping[str, Tensor] | Sequence[Tensor], timeout: float | None = None) -> dict[str, Any]:
        """``recv`` + copy into caller-owned tensors (layout-checked) + ``release``: returns the metadata."""
        dst = self.layout.order(out, self.name)
        msg = self.recv(timeout)
        try:
            if msg.is_data:
                with torch.no_grad():
                    for d, s in zip(dst, msg.tensors.values()):
                        d.copy_(s)
            return msg.meta
        finally:
            msg.release()

    def close(self) -> None:
        """Tell the sender (best effort), close sockets, free slots. Idempotent."""
        if self._closed:
            return
        self._closed = True
        to = self.config.close_timeout_s
        if self._link is None and self._listener is not None and (self._pending or _readable(self._listener)):
            try:  # a sender connected but was never accepted: accept it so it learns about the close
                self._connect(time.monotonic() + to, to)
            except (ChannelError, OSError):
                pass
        if self._link is not None:
            try:
                self._link.send([OP_CLOSED, "receiver closed"], time.monotonic() + to, to, "sending close")
            except (ChannelError, OSError):
                pass
            self._link.close()
        self._stop_listening("the receiver closed")
        self._held.clear()
        self._views = []
        self._free_resources()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.layout}, depth={self.depth}, "
                f"{'closed' if self._closed else 'connected' if self._link else 'waiting for sender'})")

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(self.name, "receiver is closed")

    def _check_seq(self, seq: int) -> None:
        if seq != self._next_seq:
            raise ChannelError(self.name, f"receiver: message {seq} arrived, expected {self._next_seq} (lost or reordered)")
        self._next_seq += 1

    # -- accepting the expected sender (and nobody else) ---------------------------------------
    def _listen(self, sock: socket.socket) -> None:
        """Start accepting on ``sock`` (bound): non-blocking, watched by an epoll with the pending hellos."""
        sock.listen(self.config.listen_backlog)
        sock.setblocking(False)
        self._listener = sock
        self._poller = select.epoll()
        self._poller.register(sock.fileno(), select.EPOLLIN)

    def _connect(self, deadline: float, to: float) -> None:
        """Accept connections until one completes a valid hello; drop every other one (see the module
        doc: pending hellos are read before newcomers are accepted, within the budgets)."""
        lfd = self._listener.fileno()
        while self._link is None:
            now = time.monotonic()
            for p in [p for p in self._pending.values() if p.deadline <= now]:
                self._drop(p, f"no valid hello within {self.config.hello_timeout_s:g} s")
            rem = deadline - now
            if rem <= 0:
                raise ChannelTimeout(self.name, "receiver", "a sender to attach", to)
            wait = min([rem] + [p.deadline - now for p in self._pending.values()])
            ready = {fd for fd, _ in self._poller.poll(max(wait, 0.0))}
            # in accept order: the first connection to prove itself wins, before any newcomer counts
            for p in sorted((self._pending[fd] for fd in ready if fd in self._pending), key=lambda p: p.order):
                if self._advance(p) == "proven":
                    break
            if self._link is None and lfd in ready:
                self._accept_new(deadline)
        self._stop_listening("the expected sender is connected")
        self._on_connected()

    def _accept_new(self, deadline: float) -> None:
        """Accept up to ``accept_batch`` connections, reading each at once; hold the unproven ones
        within the budgets."""
        cfg = self.config
        fresh: list[_Pending] = []
        for _ in range(cfg.accept_batch):
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # out of fds (or kernel memory): make room among the unproven, try again
                if e.errno in (errno.EMFILE, errno.ENFILE) and (self._pending or fresh):
                    if self._evict_for_fds(fresh, e):
                        break
                    continue
                log.warning("channel %r: accept failed: %s", self.name, e)
                time.sleep(max(0.0, min(0.05, deadline - time.monotonic())))   # the listener stays readable
                break
            peer = _peer_name(addr, conn)
            why = self._peer_problem(conn)
            if why is not None:
                self._reject(conn, peer, why)
                continue
            conn.setblocking(False)
            conn = self._secure(conn)
            self._accepted += 1
            now = time.monotonic()
            p = _Pending(conn, peer, addr, now, now + cfg.hello_timeout_s, self._accepted)
            try:
                state = self._advance(p)   # a sender's hello usually came with its connection
            except BaseException:
                for q in fresh:
                    self._drop(q, "dropped unauthenticated: the receiver failed", quiet=True)
                raise
            if state == "proven":
                break
            if state == "pending":
                fresh.append(p)
        if self._link is not None:
            for q in fresh:
                self._drop(q, "dropped unauthenticated: the expected sender is connected")
        elif fresh:
            self._admit(fresh)

    def _evict_for_fds(self, fresh: list["_Pending"], e: OSError) -> bool:
        """Close one unproven connection so that the next accept gets a file descriptor (True: it had
        proven itself meanwhile and is now the link)."""
        p = fresh.pop() if fresh else self._victim(list(self._pending.values()))   # not held yet: the newest
        return self._evict(p, f"out of file descriptors ({e.strerror}): evicted an unproven connection")

    def _evict(self, p: "_Pending", why: str) -> bool:
        """Drop an unproven connection for room, unless its hello has arrived meanwhile: a connection
        that has sent a valid hello is never evicted (True: it is now the link)."""
        state = self._advance(p)
        if state == "pending":
            self._drop(p, why)
        return state == "proven"

    def _admit(self, fresh: list["_Pending"]) -> None:
        """Hold connections still in their hello; enforce the per-source and overall budgets."""
        cfg = self.config
        refused = self._classify(fresh)   # the transport names each one's source (and may refuse some)
        for p in fresh:
            if p.order in refused:
                self._drop(p, refused[p.order])
                continue
            self._pending[p.sock.fileno()] = p
            self._poller.register(p.sock.fileno(), select.EPOLLIN)
        by_source: dict[str, list[_Pending]] = {}
        for p in self._pending.values():
            by_source.setdefault(p.source, []).append(p)
        for src, conns in by_source.items():
            while len(conns) > cfg.max_pending_per_source:
                victim = self._victim(conns)
                conns.remove(victim)
                if self._evict(victim, f"more than {cfg.max_pending_per_source} unproven connections from {src}"):
                    return
        while len(self._pending) > cfg.max_pending:
            busiest = max(by_source.values(), key=lambda c: (len(c), max(p.order for p in c)))
            victim = self._victim(busiest)
            busiest.remove(victim)
            if self._evict(victim, f"more than {cfg.max_pending} unproven connections (this one from the busiest "
                                   f"source, {victim.source})"):
                return

    def _victim(self, conns: list["_Pending"]) -> "_Pending":
        """Which of ``conns`` goes: the oldest one that had its grace period, else the newest (a
        connection is never evicted before it could say hello)."""
        now = time.monotonic()
        old = [p for p in conns if now - p.t0 >= self.config.hello_grace_s]
        return min(old, key=lambda p: p.order) if old else max(conns, key=lambda p: p.order)

    def _advance(self, p: "_Pending") -> str:
        """Read what a pending connection sent so far: ``'proven'`` (it is now the link), ``'dropped'``,
        or ``'pending'`` (more to come)."""
        try:
            body = p.read(self.packet)
        except (BlockingIOError, InterruptedError):
            return "pending"
        except _Drop as e:
            self._drop(p, str(e))
            return "dropped"
        except OSError as e:
            self._drop(p, f"connection failed ({e.__class__.__name__})")
            return "dropped"
        if body is None:
            return "pending"
        try:
            fingerprint, pid, epoch, nonce = auth.check_hello(self.config.key, self.name, self.token,
                                                              decode(body, self.name, "hello"))
        except ChannelError:
            self._drop(p, "undecodable hello")
            return "dropped"
        except auth.Rejected as e:
            self._drop(p, str(e))
            return "dropped"
        if epoch != self.config.epoch:   # a cell fenced off with a lost host (or from an earlier wiring)
            self.stats.fenced += 1
            self._drop(p, f"hello of grid epoch {epoch} (pid {pid}): fenced, this receiver's epoch is "
                          f"{self.config.epoch}")
            return "dropped"
        if fingerprint != self.layout.fingerprint:  # the run's own sender, misconfigured: not an intruder
            self._drop(p, "its layout differs", quiet=True)
            raise ChannelError(self.name, f"receiver: rejected a connection from {p.peer} (pid {pid}): "
                                          "its layout differs from this channel's")
        self._unwatch(p)
        p.sock.setblocking(True)
        link = self._wrap(p.sock)
        to = self.config.connect_timeout_s
        try:
            link.send(auth.welcome(self.config.key, self.name, self.token, nonce), time.monotonic() + to, to,
                      "sending the welcome")
        except BaseException:
            link.close()  # the sender proved itself, then went away: that is its death, not an intrusion
            raise
        self._link, self.peer = link, f"{p.peer} (pid {pid})"
        self.stats.tls = tls.describe(p.sock)
        return "proven"

    def _unwatch(self, p: "_Pending") -> None:
        self._pending.pop(p.sock.fileno(), None)
        try:
            self._poller.unregister(p.sock.fileno())
        except (OSError, ValueError):
            pass

    def _drop(self, p: "_Pending", why: str, quiet: bool = False) -> None:
        self._unwatch(p)
        self._reject(p.sock, p.peer, why, quiet)

    def _reject(self, sock: socket.socket, peer: str, why: str, quiet: bool = False) -> None:
        """Close a connection that is not the expected sender; log it (the first few) and count it."""
        try:
            sock.close()
        except OSError:
            pass
        if quiet:
            return
        self.stats.rejected += 1
        self.stats.last_rejected = f"{peer}: {why}"
        if self.stats.rejected <= LOG_REJECTIONS:
            log.warning("channel %r: dropped a connection from %s: %s%s", self.name, peer, why,
                        " (further drops are only counted)" if self.stats.rejected == LOG_REJECTIONS else "")

    def _stop_listening(self, why: str) -> None:
        """Close the listener and every connection still in its hello (idempotent)."""
        for p in list(self._pending.values()):
            self._drop(p, f"dropped unauthenticated: {why}")
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def _on_connected(self) -> None:
        """Hook after the sender's hello was accepted."""

    def _release(self, slot: int) -> None:
        if slot not in self._held or self._closed:
            return
        self._held.discard(slot)
        try:
            to = self.config.close_timeout_s
            self._link.send([OP_CREDIT, slot], time.monotonic() + to, to, "returning a credit")
        except (PeerDied, ChannelError):
            pass  # the sender is gone or stuck: nobody to give the credit to


class Sender(_NoPickle, ABC):
    """Sending end of a channel: attaches to a receiver's descriptor and holds the credits.

    Subclasses set ``_link`` and implement ``_views_for(slot)`` (writable views for reserve) and
    ``_publish(slot, meta, ...)``; ``_send_tensors`` may be overridden to avoid a staging copy.
    Not thread-safe: use each endpoint from one thread.
    """

    transport = "?"

    def __init__(self, desc: ChannelDescriptor, config: ChannelConfig):
        self.descriptor = desc
        self.name = desc.name
        self.config = config
        self.layout = Layout(desc.specs, desc.config.align)
        self.depth = int(desc.depth)
        self.stats = ChannelStats(self.name, "sender", self.transport, config.stats_window)
        self._link: Link | None = None
        self._free: list[int] = list(range(self.depth))[::-1]  # pop() takes slot 0 first
        self._inflight: set[int] = set()
        self._reserved: int | None = None
        self._reserve_blocked = 0.0
        self._seq = 0
        self._closed = False
        self._receiver_closed = False
        secret = config.secret or desc.config.secret
        if secret is None:
            raise ChannelError(self.name, "sender: no secret to authenticate with (neither the config nor "
                                          "the descriptor has one)")
        self._key = bytes.fromhex(secret)
        self._nonce = b""
        self._welcomed = False  # the receiver proved it holds the secret (checked before any credit)
        self._hello_due = False  # the hello waits for the first message (a TLS handshake needs the receiver)
        self._unwelcomed: list[tuple[Any, list[bytes]]] = []   # sent on this connection before the welcome
        self._redial_by: float | None = None                   # reconnecting allowed until then

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def _views_for(self, slot: int) -> dict[str, Tensor]:
        """Writable views the producer fills before ``commit`` (slot memory or a staging buffer)."""

    @abstractmethod
    def _publish(self, slot: int, seq: int, meta: dict, deadline: float, to: float) -> None:
        """Make the reserved slot's content visible to the receiver and send the sent event."""

    def _send_tensors(self, slot: int, seq: int, tensors: list[Tensor], meta: dict, deadline: float,
                      to: float) -> None:
        """Copy into the slot (one copy_ per tensor) then publish; transports may override."""
        views = self._views_for(slot)
        with torch.no_grad():
            for v, t in zip(views.values(), tensors):
                v.copy_(t)
        self._publish(slot, seq, meta, deadline, to)

    def _free_resources(self) -> None:
        """Release transport resources."""

    def _redial(self, deadline: float) -> Link | None:
        """A new connection to the receiver (its hello not sent yet), or None if the transport cannot
        reconnect. PeerDied when nothing listens there any more."""
        return None

    # -- public -------------------------------------------------------------------------------
    def send(self, tensors: Sequence[Tensor] | Mapping[str, Tensor], meta: Mapping[str, Any] | None = None,
             timeout: float | None = None) -> None:
        """Wait for a credit, copy ``tensors`` (list in layout order, or dict by name) into the slot, publish.

        ValueError (naming the tensor) if they do not match the layout; ChannelTimeout if no slot is
        released within ``timeout`` (default ``config.send_timeout_s``).
        """
        ordered = self.layout.order(tensors, self.name)
        m = _make_meta(meta, "data", self.name, self.config.max_meta_bytes)
        self._check_ready()
        to = _timeout(timeout, self.config.send_timeout_s)
        deadline = time.monotonic() + to
        slot, blocked = self._acquire(deadline, to)
        t0 = time.monotonic()
        try:
            self._send_tensors(slot, self._seq, ordered, m, deadline, to)
        except PeerDied as e:
            raise self._explain_send_failure(e) from None
        except BaseException:
            self._free.append(slot)
            raise
        self._sent(slot, blocked, time.monotonic() - t0)

    def reserve(self, timeout: float | None = None) -> dict[str, Tensor]:
        """Wait for a credit and return writable views of the next slot (write your output there),
        then call ``commit(meta)`` (or ``abort()``). One reservation at a time."""
        self._check_ready()
        to = _timeout(timeout, self.config.send_timeout_s)
        slot, blocked = self._acquire(time.monotonic() + to, to)
        self._reserved, self._reserve_blocked = slot, blocked
        return dict(self._views_for(slot))

    def commit(self, meta: Mapping[str, Any] | None = None, timeout: float | None = None) -> None:
        """Publish the reserved slot with ``meta`` (the sent event)."""
        if self._reserved is None:
            raise RuntimeError(f"channel {self.name!r}: commit() without reserve()")
        m = _make_meta(meta, "data", self.name, self.config.max_meta_bytes)
        self._check_open()
        to = _timeout(timeout, self.config.send_timeout_s)
        slot, self._reserved = self._reserved, None
        t0 = time.monotonic()
        try:
            self._publish(slot, self._seq, m, t0 + to, to)
        except PeerDied as e:
            raise self._explain_send_failure(e) from None
        except BaseException:
            self._free.append(slot)
            raise
        self._sent(slot, self._reserve_blocked, time.monotonic() - t0)

    def abort(self) -> None:
        """Give up the current reservation (the slot stays with the sender)."""
        if self._reserved is not None:
            self._free.append(self._reserved)
            self._reserved = None

    def send_control(self, kind: str = "stop", meta: Mapping[str, Any] | None = None,
                     timeout: float | None = None) -> None:
        """Send a payload-less message ('stop' or 'error', metadata only); needs no credit."""
        if kind not in KINDS or kind == "data":
            raise ValueError(f"channel {self.name!r}: send_control kind {kind!r}: expected 'stop' or 'error'")
        m = _make_meta({**(meta or {}), "kind": kind}, kind, self.name, self.config.max_meta_bytes)
        self._check_ready()
        to = _timeout(timeout, self.config.send_timeout_s)
        t0 = time.monotonic()
        try:
            self._send_msg([OP_CONTROL, self._seq, self._clock_ns(), m], t0 + to, to, "sending a control message")
        except PeerDied as e:
            raise self._explain_send_failure(e) from None
        self._seq += 1
        self.stats.record(0, 0.0, time.monotonic() - t0, control=True)

    def close(self) -> None:
        """Tell the receiver no more messages follow (best effort) and detach. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.abort()
        if self._link is not None and not self._hello_due:   # never said hello: nothing to close there
            try:
                to = self.config.close_timeout_s
                self._link.send([OP_END], time.monotonic() + to, to, "sending close")
            except (ChannelError, OSError):
                pass
            self._link.close()
        self._free_resources()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def credits(self) -> int:
        """Slots the sender may write now without waiting (credits already received)."""
        return len(self._free)

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, {self.layout}, depth={self.depth}, credits={len(self._free)}"
                f"{', closed' if self._closed else ''})")

    # -- internals ----------------------------------------------------------------------------
    def _clock_ns(self) -> int:
        return time.monotonic_ns()

    def _check_open(self) -> None:
        if self._closed:
            raise ChannelClosed(self.name, "sender is closed")
        if self._receiver_closed:
            raise ChannelClosed(self.name, "receiver closed the channel")

    def _check_ready(self) -> None:
        self._check_open()
        if self._reserved is not None:
            raise RuntimeError(f"channel {self.name!r}: a reservation is pending: commit() or abort() first")

    def _hello(self, deadline: float, to: float) -> None:
        """Send the authenticated hello (the first message on the connection)."""
        msg, self._nonce = auth.hello(self._key, self.name, self.descriptor.token, self.layout.fingerprint,
                                      os.getpid(), self.config.epoch)
        self.hello_message = msg
        self._link.send(msg, deadline, to, "sending hello")

    def _send_msg(self, obj: Any, deadline: float, to: float, what: str, payload: Sequence[memoryview] = ()) -> None:
        """Send a message (with its payload) on the connection; until the receiver has welcomed this
        connection, keep a copy to replay if it drops the connection (see :meth:`_rehello`). Data and
        control messages end with this sender's grid epoch."""
        if obj and obj[0] in (OP_DATA, OP_CONTROL):
            obj = [*obj, self.config.epoch]
        if self._hello_due:
            self._hello_due = False
            self._hello(max(deadline, time.monotonic() + self.config.connect_timeout_s), self.config.connect_timeout_s)
        if not self._welcomed:
            self._poll_welcome()
        kept = None if self._welcomed else (obj, [bytes(m) for m in payload])
        if kept is not None:
            self._unwelcomed.append(kept)
        try:
            try:
                self._link.send(obj, deadline, to, what, payload=payload)
            except PeerDied:
                if not self._dropped_unwelcomed():
                    raise
                self._rehello()   # replays this message too
        except BaseException:
            if kept is not None and self._unwelcomed and self._unwelcomed[-1] is kept:
                self._unwelcomed.pop()   # not sent: the caller may try it again (same seq)
            raise

    def _poll_welcome(self) -> None:
        """Take the receiver's messages that have arrived (the welcome first) without waiting; a
        connection it dropped before welcoming it is dialled again."""
        while not self._welcomed and self._link.readable_now():
            try:
                msg = self._link.recv(time.monotonic() + self.config.close_timeout_s, self.config.close_timeout_s,
                                      "the welcome")
            except PeerDied:
                msg = None
            if msg is None:
                self._rehello()
            else:
                self._on_control(msg)

    def _dropped_unwelcomed(self) -> bool:
        """After the connection failed: True if the receiver never welcomed it (so it read nothing of it
        beyond the hello); a welcome still waiting to be read is taken first."""
        try:
            while not self._welcomed and self._link.readable_now():
                msg = self._link.recv(time.monotonic() + 0.05, 0.05, "the welcome")
                if msg is None:
                    break
                self._on_control(msg)
        except PeerDied:
            pass
        return not self._welcomed

    def _rehello(self) -> None:
        """The receiver dropped this connection before welcoming it, so it read nothing of it beyond the
        hello (it drops unproven connections when flooded): connect again, say hello again and replay
        what was sent on it; retried for up to ``connect_timeout_s`` from the first drop. PeerDied when
        the receiver no longer listens (it closed, died, or has its sender) or the time is up."""
        cfg = self.config
        if self._redial_by is None:
            self._redial_by = time.monotonic() + cfg.connect_timeout_s
        while True:
            if time.monotonic() >= self._redial_by:
                raise PeerDied(self.name, f"sender: the receiver dropped this sender's connection before welcoming "
                                          f"it, {self.stats.reconnects + 1} time(s) in {cfg.connect_timeout_s:g} s")
            link = self._redial(self._redial_by)
            if link is None:
                raise PeerDied(self.name, "sender: the receiver dropped the connection before welcoming it")
            self._link.close()
            self._link = link
            self.stats.reconnects += 1
            to = cfg.connect_timeout_s
            try:
                self._hello(self._redial_by, to)
                for obj, bufs in self._unwelcomed:
                    self._link.send(obj, self._redial_by, to, "replaying a message the receiver dropped",
                                    payload=[memoryview(b) for b in bufs])
                return
            except PeerDied:
                time.sleep(0.01)   # dropped again: the next connection (bounded by _redial_by)

    def _acquire(self, deadline: float, to: float) -> tuple[int, float]:
        """A free slot, waiting (in the kernel) for a credit if none; returns (slot, seconds blocked)."""
        if self._free:
            return self._free.pop(), 0.0
        t0 = time.monotonic()
        what = f"a credit (all {self.depth} slots are unreleased by the receiver)"
        while not self._free:
            try:
                msg = self._link.recv(deadline, to, what)
            except PeerDied:
                if self._welcomed:
                    raise
                msg = None
            if msg is None and not self._welcomed:
                self._rehello()
                continue
            self._on_control(msg)
        return self._free.pop(), time.monotonic() - t0

    def _on_control(self, msg: list | None) -> None:
        if msg is None:
            raise PeerDied(self.name, "sender: receiver process is gone (EOF on the control socket)")
        try:
            op = msg[0]
            if not self._welcomed:
                if op == OP_CLOSED:
                    self._receiver_closed = True
                    raise ChannelClosed(self.name, f"sender: {msg[1]}")
                if not auth.welcome_ok(self._key, self.name, self.descriptor.token, self._nonce, msg):
                    raise ChannelError(self.name, "sender: the peer at the descriptor's address did not prove it "
                                                  f"holds the run's secret (first message {str(op)[:16]!r})")
                self._welcomed = True
                self.stats.tls = tls.describe(self._link.sock)
                self._unwelcomed.clear()
                self._redial_by = None
                return
            if op == OP_CREDIT:
                slot = msg[1]
                if slot not in self._inflight:
                    raise ChannelError(self.name, f"sender: protocol error: credit for slot {slot!r} not in flight")
                self._inflight.discard(slot)
                self._free.append(slot)
            elif op == OP_CLOSED:
                self._receiver_closed = True
                raise ChannelClosed(self.name, f"sender: {msg[1]}")
            else:
                raise ChannelError(self.name, f"sender: protocol error: unexpected opcode {op!r}")
        except ChannelError:
            raise
        except _MALFORMED as e:
            raise ChannelError(self.name, f"sender: protocol error: malformed message "
                                          f"({type(e).__name__}: {e})") from None

    def _sent(self, slot: int, blocked: float, busy: float) -> None:
        self._seq += 1
        self._inflight.add(slot)
        self.stats.record(self.layout.nbytes, blocked, busy)

    def _explain_send_failure(self, err: PeerDied) -> ChannelError:
        """After a failed write: a close message from the receiver may be waiting; prefer it."""
        try:
            while self._link.readable_now():
                msg = self._link.recv(time.monotonic() + 0.05, 0.05, "the receiver's last messages")
                if msg is None:
                    break
                self._on_control(msg)
        except ChannelClosed as e:
            return e
        except ChannelError:
            pass
        return err


class Transport(ABC):
    """A way to move messages of a fixed layout; registered by name (``register_transport``).

    A new transport implements a ``Receiver`` (allocate ``config.depth`` slots, listen, fill
    ``address``), a ``Sender`` (attach from the descriptor, ``_views_for``, ``_publish``) and this
    class's two factories. Credits, metadata, ordering, timeouts, authentication and stats come from
    the bases.
    """

    name: str = "?"

    @abstractmethod
    def create_receiver(self, name: str, layout: Layout, config: ChannelConfig) -> Receiver:
        """Create the receiving end in the calling process."""

    @abstractmethod
    def attach_sender(self, desc: ChannelDescriptor, config: ChannelConfig) -> Sender:
        """Attach the sending end, in the calling process, to a receiver's descriptor."""


_TRANSPORTS: dict[str, Transport] = {}


def register_transport(transport: Transport, replace: bool = False) -> None:
    """Make a transport available under ``transport.name``."""
    if transport.name in _TRANSPORTS and not replace:
        raise ValueError(f"transport {transport.name!r} is already registered")
    _TRANSPORTS[transport.name] = transport


def get_transport(name: str) -> Transport:
    """The registered transport ``name``; ValueError naming the known ones otherwise."""
    try:
        return _TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"unknown channel transport {name!r}: expected one of {sorted(_TRANSPORTS)}") from None


def transports() -> list[str]:
    """Names of the registered transports."""
    return sorted(_TRANSPORTS)


def create_receiver(name: str, specs: Iterable[TensorSpec], config: ChannelConfig | None = None,
                    **overrides: Any) -> Receiver:
    """Create the receiving end of channel ``name`` for messages of layout ``specs`` in this process.

    ``overrides`` change single config fields (``depth=3``, ``transport="tcp"``). Ship
    ``receiver.descriptor`` to the sender's process and call ``attach_sender`` there.
    """
    cfg = (config or ChannelConfig())
    if overrides:
        cfg = cfg.replace(**overrides)
    return get_transport(cfg.transport).create_receiver(name, Layout(list(specs), cfg.align), cfg)


def attach_sender(descriptor: ChannelDescriptor, config: ChannelConfig | None = None, **overrides: Any) -> Sender:
    """Attach the sending end to a receiver's descriptor (in the sender's process).

    The sender uses the descriptor's config unless ``config`` is given (depth and alignment always
    come from the receiver).
    """
    if isinstance(descriptor, Mapping):
        descriptor = ChannelDescriptor.from_dict(descriptor)
    cfg = config or descriptor.config
    if overrides:
        cfg = cfg.replace(**overrides)
    return get_transport(descriptor.transport).attach_sender(descriptor, cfg)


def wait_any(receivers: Sequence[Receiver], timeout: float) -> list[Receiver]:
    """Block (in the kernel) until at least one receiver has something to ``recv`` (a message, a close,
    or a dead peer), or ``timeout`` seconds pass; returns the ready ones (empty on timeout)."""
    ready = [r for r in receivers if r._link is not None and isinstance(r._link.sock, ssl.SSLSocket)
             and r._link.sock.pending()]
    if ready:                       # TLS: decrypted bytes waiting that no poll would see
        return ready
    p = select.poll()
    by_fd = {}
    for r in receivers:
        fd = r.fileno()
        by_fd[fd] = r
        p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return [by_fd[fd] for fd, _ in p.poll(max(0.0, timeout) * 1e3)]
