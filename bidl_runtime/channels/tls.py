"""TLS on the tcp channels (the edges between hosts), with each node's own certificate.

With ``ChannelConfig(tls=True)`` a tcp receiver hands every accepted connection to TLS before it
reads anything (server side; the peer must present a certificate the CA signed) and a tcp sender
dials with TLS (it checks the receiver's certificate against the CA and the address it dials). The
HMAC hello of :mod:`~bidl_runtime.channels.auth` follows inside TLS, unchanged: TLS keeps what crosses
the network private and whole, the hello still proves both ends hold the run's secret (and are of
the run's grid epoch). A sender's handshake waits for its first message (the receiver drives its side
while it waits for messages, so wiring never blocks on a receiver that is not reading yet).

Files: this process's environment, the variables Ray's own TLS reads (every node of a Ray cluster
with TLS has them, and its workers, the cells, inherit them): ``RAY_TLS_SERVER_CERT`` (this host's
certificate, also used as the client certificate), ``RAY_TLS_SERVER_KEY``, ``RAY_TLS_CA_CERT``.
"""
from __future__ import annotations

import os
import ssl
from functools import lru_cache
from typing import Optional

ENV = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


class TlsUnavailable(ValueError):
    """TLS was asked for but this process has no usable certificate, key or CA (one line, naming them)."""


def tls_files() -> tuple[str, str, str]:
    """``(certificate, key, CA certificate)`` from the environment; TlsUnavailable naming what is missing."""
    missing = [v for v in ENV if not os.environ.get(v)]
    if missing:
        raise TlsUnavailable(f"TLS between hosts needs {', '.join(ENV)} (this host's certificate and key, the "
                             f"cluster's CA; the ones Ray's TLS uses): {', '.join(missing)} not set")
    files = tuple(os.environ[v] for v in ENV)
    for var, path in zip(ENV, files):
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise TlsUnavailable(f"{var}={path}: no such readable file")
    return files   # type: ignore[return-value]


@lru_cache(maxsize=4)
def _context(server: bool, files: tuple[str, str, str]) -> ssl.SSLContext:
    cert, key, ca = files
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
    except (ssl.SSLError, OSError) as e:
        raise TlsUnavailable(f"TLS files {cert}, {key}, {ca}: unusable ({getattr(e, 'reason', None) or e})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED        # both ends prove themselves (clients: checked against the CA)
    return ctx


def server_context() -> ssl.SSLContext:
    """The receivers' context: this host's certificate, client certificates required (the CA's)."""
    return _context(True, tls_files())


def client_context() -> ssl.SSLContext:
    """The senders' context: this host's certificate, the receiver's checked against the CA and its address."""
    return _context(False, tls_files())


def wrap_server(sock) -> ssl.SSLSocket:
    """An accepted connection under TLS, its handshake left to the first reads (non-blocking)."""
    return server_context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False)


def wrap_client(sock, host: str) -> ssl.SSLSocket:
    """A dialled connection under TLS for receiver ``host``; the handshake happens with the first message."""
    return client_context().wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)


def describe(sock) -> Optional[str]:
    """``'TLSv1.3 TLS_AES_256_GCM_SHA384'`` for a TLS connection past its handshake, else None."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        cipher = sock.cipher()
        return f"{sock.version()} {cipher[0]}" if cipher else None
    except (ValueError, OSError):
        return None
