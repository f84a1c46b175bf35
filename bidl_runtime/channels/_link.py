"""A connected control socket carrying msgpack messages, with deadlines and clear errors.

Packet mode (Unix SOCK_SEQPACKET): one datagram per message, boundaries kept by the kernel.
Stream mode (TCP): each message is a big-endian u32 length + msgpack body, optionally followed by raw
payload bytes the caller reads with ``recv_into_views``.
"""
from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Sequence

import msgpack

from .errors import ChannelError, ChannelTimeout, PeerDied

_LEN = struct.Struct("!I")
_NOSIG = getattr(socket, "MSG_NOSIGNAL", 0)
_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
SMALL_FRAME = 64 << 10  # payloads up to this size are joined with their header into one write
LEN = _LEN


def decode(data: Any, channel: str, what: str) -> Any:
    """msgpack-decode one message body; any failure is a ChannelError naming the channel."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types (ValueError, TypeError, its own)
        raise ChannelError(channel, f"{what}: undecodable message ({type(e).__name__}: {e})") from None


class Link:
    """Control connection of one endpoint; not thread-safe (one thread per endpoint)."""

    def __init__(self, sock: socket.socket, channel: str, role: str, packet: bool, max_msg: int,
                 frame_timeout_s: float = 60.0):
        self.sock = sock
        self.flags = 0 if isinstance(sock, ssl.SSLSocket) else _NOSIG   # TLS sockets take no send flags
        self.frame_timeout_s = frame_timeout_s
        self.channel, self.role, self.packet, self.max_msg = channel, role, packet, max_msg
        self._buf = bytearray(max_msg + 1) if packet else bytearray(_LEN.size)
        self._broken: str | None = None
        self._send_lock = threading.Lock()  # release() may run on another thread than recv()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """Discard unread input first (closing an AF_UNIX socket with unread data makes the peer see
        ECONNRESET instead of our last message), then close."""
        try:
            self.sock.setblocking(False)
            for _ in range(10000):
                if not self.sock.recv(65536):
                    break
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    # -- helpers ------------------------------------------------------------------------------
    def _arm(self, deadline: float, timeout_s: float, what: str) -> None:
        if self._broken:
            raise ChannelError(self.channel, f"{self.role}: connection unusable: {self._broken}")
        rem = deadline - time.monotonic()
        if rem <= 0:
            raise ChannelTimeout(self.channel, self.role, what, timeout_s)
        self.sock.settimeout(rem)

    def _gone(self, e: OSError, what: str) -> PeerDied:
        return PeerDied(self.channel, f"{self.role}: peer is gone ({e.__class__.__name__}: {e.strerror or e}) "
                                      f"while {what}")

    def encode(self, obj: Any) -> bytes:
        data = msgpack.packb(obj, use_bin_type=True)
        if len(data) > self.max_msg:
            raise ValueError(f"channel {self.channel!r}: message header of {len(data)} B exceeds the limit of "
                             f"{self.max_msg} B (ChannelConfig.max_meta_bytes): keep metadata small")
        return data

    # -- send ---------------------------------------------------------------------------------
    def send(self, obj: Any, deadline: float, timeout_s: float, what: str,
             payload: Sequence[memoryview] = ()) -> None:
        """Send one message (plus raw payload buffers, stream mode only) before ``deadline``.

        Stream mode: a frame, once started, cannot be abandoned, so the whole frame gets at least
        ``frame_timeout_s`` (the caller's timeout bounds the wait for a credit, not the write)."""
        data = self.encode(obj)
        if not self.packet:
            deadline = max(deadline, time.monotonic() + self.frame_timeout_s)
            timeout_s = max(timeout_s, self.frame_timeout_s)
        with self._send_lock:
            self._send_locked(data, deadline, timeout_s, what, payload)

    def _send_locked(self, data: bytes, deadline: float, timeout_s: float, what: str,
                     payload: Sequence[memoryview]) -> None:
        self._arm(deadline, timeout_s, what)
        try:
            if self.packet:
                self.sock.send(data, _NOSIG)
                return
            head = _LEN.pack(len(data)) + data
            total = sum(m.nbytes for m in payload)
            if total <= SMALL_FRAME:
                self.sock.sendall(b"".join([head, *payload]) if payload else head, self.flags)
                return
            self.sock.sendall(head, self.flags)
            for m in payload:
                self._arm(deadline, timeout_s, what)
                self.sock.sendall(m, self.flags)
        except ChannelError:
            raise
        except TimeoutError:
            if not self.packet:
                self._broken = f"a send timed out mid-frame ({what})"
            raise ChannelTimeout(self.channel, self.role, what, timeout_s) from None
        except _GONE as e:
            raise self._gone(e, what) from None
        except ssl.SSLError as e:
            self._broken = f"TLS failed ({e.reason or e})"
            raise PeerDied(self.channel, f"{self.role}: TLS failed while {what} ({e.reason or e})") from None

    # -- receive ------------------------------------------------------------------------------
    def recv(self, deadline: float, timeout_s: float, what: str) -> Any | None:
        """Next message, or None on EOF (the peer closed its socket or its process exited)."""
        self._arm(deadline, timeout_s, what)
        try:
            if self.packet:
                try:
                    n = self.sock.recv_into(self._buf)
                except ConnectionResetError:
                    # the peer closed with our messages unread; the error is reported once, and the
                    # datagrams it sent before closing are still queued: read them, then EOF follows
                    self.sock.settimeout(0.0)
                    try:
                        n = self.sock.recv_into(self._buf)
                    except (BlockingIOError, ConnectionResetError):
                        return None
                if n == 0:
                    return None
                if n > self.max_msg:
                    raise ChannelError(self.channel, f"{self.role}: control message larger than {self.max_msg} B")
                return decode(memoryview(self._buf)[:n], self.channel, self.role)
            if not self._read_exact(memoryview(self._buf), deadline, timeout_s, what, eof_ok=True):
                return None
            # the frame has started: the rest of it (and its payload) may take up to frame_timeout_s
            deadline, timeout_s = self.frame_deadline(deadline), max(timeout_s, self.frame_timeout_s)
            (n,) = _LEN.unpack(self._buf)
            if n > self.max_msg:
                self._broken = f"frame header of {n} B exceeds {self.max_msg} B"
                raise ChannelError(self.channel, f"{self.role}: {self._broken} (corrupt stream?)")
            body = bytearray(n)
            self._read_exact(memoryview(body), deadline, timeout_s, what, eof_ok=False)
            try:
                return decode(body, self.channel, self.role)
            except ChannelError:
                self._broken = "an undecodable frame"  # the stream's framing can no longer be trusted
                raise
        except ChannelError:
            raise
        except TimeoutError:
            raise ChannelTimeout(self.channel, self.role, what, timeout_s) from None
        except _GONE as e:
            raise self._gone(e, what) from None
        except ssl.SSLError as e:
            self._broken = f"TLS failed ({e.reason or e})"
            raise PeerDied(self.channel, f"{self.role}: TLS failed while {what} ({e.reason or e})") from None

    def frame_deadline(self, deadline: float) -> float:
        """Deadline for finishing a frame that has started arriving."""
        return max(deadline, time.monotonic() + self.frame_timeout_s)

    def recv_into_views(self, views: Sequence[memoryview], deadline: float, timeout_s: float, what: str) -> None:
        """Fill each buffer completely from the stream (payload following a frame header)."""
        try:
            for mv in views:
                self._read_exact(mv.cast("B") if mv.format != "B" else mv, deadline, timeout_s, what, eof_ok=False)
        except ChannelError:
            raise
        except _GONE as e:
            raise self._gone(e, what) from None

    def _read_exact(self, mv: memoryview, deadline: float, timeout_s: float, what: str, eof_ok: bool) -> bool:
        pos, n = 0, mv.nbytes
        while pos < n:
            if pos and eof_ok:  # first bytes of a frame arrived: finishing it is bounded by frame_timeout_s
                deadline, timeout_s, eof_ok = self.frame_deadline(deadline), max(timeout_s, self.frame_timeout_s), False
            try:
                self._arm(deadline, timeout_s, what)
                got = self.sock.recv_into(mv[pos:])
            except ChannelTimeout:
                if pos or not eof_ok:
                    self._broken = f"timed out mid-frame ({what})"
                raise
            except TimeoutError:
                if pos or not eof_ok:
                    self._broken = f"timed out mid-frame ({what})"
                raise ChannelTimeout(self.channel, self.role, what, timeout_s) from None
            if got == 0:
                if pos == 0 and eof_ok:
                    return False
                self._broken = "EOF mid-frame"
                raise PeerDied(self.channel, f"{self.role}: peer is gone (EOF in the middle of a message) while {what}")
            pos += got
        return True

    def readable_now(self) -> bool:
        """True if a message (or EOF) is waiting, without blocking (TLS: decrypted bytes count too)."""
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(p.poll(0))
