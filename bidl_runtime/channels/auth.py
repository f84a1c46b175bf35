"""The channel handshake: both ends prove they hold the run's secret before any payload moves.

The sender's first message on a new connection is the hello; the receiver answers with the welcome::

    hello   = ["H", VERSION, token, fingerprint, pid, epoch, nonce, mac]
    mac     = HMAC-SHA256(secret, msgpack(["bidl-ch hello", VERSION, channel, token, fingerprint, pid, epoch, nonce]))
    welcome = ["W", HMAC-SHA256(secret, msgpack(["bidl-ch welcome", VERSION, channel, token, nonce]))]

``token`` is the receiver's random id (from the descriptor), ``nonce`` 16 random bytes per connection,
so a hello is bound to one receiver and a welcome to one connection. ``epoch`` is the sender's grid
epoch (raised each time a grid is re-placed after losing a host): a receiver refuses a hello of
another epoch than its own, so a cell fenced off with its lost host never gets a connection to a
rewired grid (and every data or control message carries the epoch too, see ``base``). The secret itself never crosses
the data-plane socket. The receiver reads at most ``HELLO_MAX`` bytes of a connection before its MAC
checks out and drops anything else (see ``Receiver``); the sender checks the welcome before it
accepts a credit. Out of scope: an attacker who can read the cluster's network traffic (Ray's own
token crosses it in clear too): keep the cluster on a private network.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import msgpack

VERSION = 3
HELLO_MAX = 512        #: bytes: a hello frame announcing more is dropped unread
NONCE_BYTES = 16
OP_HELLO, OP_WELCOME = "H", "W"


class Rejected(Exception):
    """A connection's first message is not a valid hello for this receiver; ``str`` says why."""


def _mac(key: bytes, fields: list) -> bytes:
    return hmac.new(key, msgpack.packb(fields, use_bin_type=True), hashlib.sha256).digest()


def hello(key: bytes, channel: str, token: str, fingerprint: int, pid: int, epoch: int = 0) -> tuple[list, bytes]:
    """The sender's hello and the nonce it carries (kept to check the welcome)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    mac = _mac(key, ["bidl-ch hello", VERSION, channel, token, fingerprint, pid, epoch, nonce])
    return [OP_HELLO, VERSION, token, fingerprint, pid, epoch, nonce, mac], nonce


def check_hello(key: bytes, channel: str, token: str, msg: Any) -> tuple[int, int, int, bytes]:
    """``(fingerprint, pid, epoch, nonce)`` of a valid hello for this receiver; Rejected otherwise
    (the caller compares the epoch with its own)."""
    if not isinstance(msg, list) or len(msg) != 8 or msg[0] != OP_HELLO:
        if isinstance(msg, list) and msg and msg[0] == OP_HELLO and len(msg) > 1 and msg[1] != VERSION:
            raise Rejected(f"hello version {msg[1]!r}, expected {VERSION}")
        raise Rejected("its first message is not a hello")
    _, version, their_token, fingerprint, pid, epoch, nonce, mac = msg
    if version != VERSION:
        raise Rejected(f"hello version {version!r}, expected {VERSION}")
    if not (isinstance(their_token, str) and isinstance(fingerprint, int) and isinstance(pid, int)
            and isinstance(epoch, int) and isinstance(nonce, bytes) and len(nonce) == NONCE_BYTES
            and isinstance(mac, bytes)):
        raise Rejected("malformed hello")
    if not hmac.compare_digest(their_token, token):
        raise Rejected("hello for another channel (token differs)")
    want = _mac(key, ["bidl-ch hello", VERSION, channel, token, fingerprint, pid, epoch, nonce])
    if not hmac.compare_digest(mac, want):
        raise Rejected("hello MAC does not verify (wrong secret)")
    return fingerprint, pid, epoch, nonce


def welcome(key: bytes, channel: str, token: str, nonce: bytes) -> list:
    """The receiver's answer to a valid hello."""
    return [OP_WELCOME, _mac(key, ["bidl-ch welcome", VERSION, channel, token, nonce])]


def welcome_ok(key: bytes, channel: str, token: str, nonce: bytes, msg: Any) -> bool:
    """True if ``msg`` is the welcome for the hello that carried ``nonce``."""
    return (isinstance(msg, list) and len(msg) == 2 and msg[0] == OP_WELCOME and isinstance(msg[1], bytes)
            and hmac.compare_digest(msg[1], welcome(key, channel, token, nonce)[1]))
