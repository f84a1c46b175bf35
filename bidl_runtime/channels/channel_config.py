"""All channel tunables in one place (transport choice is separate from scheduling)."""
from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

SECRET_HEX_MIN = 32  # a run secret has at least 128 bits


def new_secret() -> str:
    """A fresh per-run channel secret (256 random bits, hex): the driver makes one per run and hands it
    to the cells through Ray (their ``ChannelConfig``); peers prove they hold it with an HMAC."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class ChannelConfig:
    """Tunables of one channel; the receiver's copy travels in the descriptor to the sender.

    Timeouts are in seconds; every wait in the channel layer is bounded by one of them.
    ``secret`` keys the HMACs of the handshake (see ``base``): the run's secret, or None for a fresh
    random one per receiver (it then travels to the sender in the descriptor). It never appears in
    ``repr`` and never crosses the data-plane wire.
    """

    transport: str = "shm"            #: "shm" (same node, zero-copy), "tcp" (host copy, any node),
                                      #: "cuda" (same node, GPU -> GPU through CUDA IPC)
    depth: int = 2                    #: slots per channel; >= 2 lets the next transfer overlap compute
    send_timeout_s: float = 60.0      #: sender waiting for a credit (a released slot) or for the kernel
    recv_timeout_s: float = 60.0      #: receiver waiting for the next "sent" event (and, tcp, its payload)
    connect_timeout_s: float = 30.0   #: sender connecting to the receiver
    frame_timeout_s: float = 60.0     #: tcp: finishing a frame once its first byte moved (a partial frame
                                      #: cannot be abandoned, so short poll timeouts do not apply to it)
    close_timeout_s: float = 1.0      #: best-effort close messages
    align: int = 64                   #: byte alignment of each tensor inside a slot
    max_meta_bytes: int = 65536       #: msgpack-encoded metadata limit per message
    stats_window: int = 4096          #: samples kept for the medians in the stats
    shm_dir: str = "/dev/shm"         #: where shm slot files are created (unlinked once the sender maps them)
    shm_populate: bool = True         #: MAP_POPULATE the slots (no read faults on the hot path)
    shm_prefault: bool = True         #: sender writes every slot page once on attach (no write faults later)
    tcp_host: str | None = None       #: address advertised to senders (None: Ray node IP if Ray is up, else 127.0.0.1)
    tcp_bind_host: str | None = None  #: address the receiver binds (None: the advertised address)
    tcp_sndbuf: int = 4 << 20         #: SO_SNDBUF of the sender's socket (bytes)
    tcp_rcvbuf: int = 4 << 20         #: SO_RCVBUF of the receiver's socket (bytes)
    tcp_checksum: bool = True         #: crc32 every payload, verified on receive
    pin_memory: bool = False          #: tcp: page-locked slot and staging buffers (fast GPU <-> host copies)
    cuda_memory: str = "cuda"         #: cuda: "cuda" (slots in GPU memory, CUDA IPC) or "host" (a host-memory
                                      #: stand-in with the same protocol, for machines without a GPU)
    cuda_ipc_events: bool = True      #: cuda: the receiver's stream waits on the sender's IPC event (False:
                                      #: the sender synchronises its copy before the sent event)
    hello_timeout_s: float = 10.0     #: a connection that has not completed a valid hello by then is dropped
    hello_grace_s: float = 1.0        #: an unproven connection younger than this is never evicted for another
                                      #: (its hello may still be on the way): a newcomer is refused instead
    max_pending: int = 256            #: unproven connections held at once, all sources together
    max_pending_per_source: int = 64  #: ... from one source (a remote host, or one local user)
    accept_batch: int = 64            #: connections accepted per round; the pending ones are read in between
    listen_backlog: int = 1024        #: connections the kernel queues until they are accepted
    tcp_same_user_only: bool = True   #: tcp: a connection from another user of this machine is dropped at
                                      #: once (Ray runs every cell as one user; shm always does this)
    tls: bool = False                 #: tcp: TLS on every connection (this host's certificate, the cluster's
                                      #: CA: Ray's RAY_TLS_* files, see ``tls``); the HMAC hello stays
    epoch: int = 0                    #: grid epoch (raised when a grid is re-placed after losing a host): a
                                      #: receiver refuses hellos and messages of another epoch (stats.fenced);
                                      #: a sender sends its own (attach_sender(desc, epoch=...))
    secret: str | None = field(default=None, repr=False)  #: hex run secret keying the handshake HMACs

    def __post_init__(self) -> None:
        if int(self.depth) < 1:
            raise ValueError(f"ChannelConfig.depth={self.depth}: must be >= 1")
        for f in ("send_timeout_s", "recv_timeout_s", "connect_timeout_s", "frame_timeout_s", "close_timeout_s",
                  "hello_timeout_s", "hello_grace_s"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ValueError(f"ChannelConfig.{f}={v!r}: must be a finite number > 0 (every wait is bounded)")
        if self.align < 1 or self.align & (self.align - 1):
            raise ValueError(f"ChannelConfig.align={self.align}: must be a power of two")
        if self.cuda_memory not in ("cuda", "host"):
            raise ValueError(f"ChannelConfig.cuda_memory={self.cuda_memory!r}: expected 'cuda' or 'host'")
        if not isinstance(self.epoch, int) or isinstance(self.epoch, bool) or self.epoch < 0:
            raise ValueError(f"ChannelConfig.epoch={self.epoch!r}: must be an int >= 0")
        for f in ("max_pending", "max_pending_per_source", "accept_batch", "listen_backlog"):
            if int(getattr(self, f)) < 1:
                raise ValueError(f"ChannelConfig.{f}={getattr(self, f)}: must be >= 1")
        if self.secret is not None:
            ok = isinstance(self.secret, str) and len(self.secret) >= SECRET_HEX_MIN
            try:
                ok = ok and bool(bytes.fromhex(self.secret))
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"ChannelConfig.secret: expected None or a hex string of at least "
                                 f"{SECRET_HEX_MIN} digits (new_secret() makes one)")

    @property
    def key(self) -> bytes:
        """The HMAC key (the secret's bytes); ValueError if no secret is set."""
        if self.secret is None:
            raise ValueError("ChannelConfig.secret is not set")
        return bytes.fromhex(self.secret)

    def replace(self, **changes: Any) -> "ChannelConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ChannelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ChannelConfig: unknown fields {unknown}")
        return cls(**dict(d))
