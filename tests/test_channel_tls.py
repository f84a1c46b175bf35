"""TLS on the tcp channels (no Ray): what crosses the wire is encrypted, both ends prove their
certificates, the HMAC hello still applies, a plain or foreign peer is dropped and counted."""
from __future__ import annotations

import socket
import threading

import pytest
import torch

from bidl_models.specs import TensorSpec
from bidl_runtime.channels import ChannelError, ChannelTimeout, attach_sender, create_receiver
from bidl_runtime.channels.base import ChannelDescriptor
from bidl_runtime.channels.tls import ENV, TlsUnavailable, tls_files
from cluster.testbed import make_pki

SPECS = [TensorSpec("x", (64, 64), "int32")]
PATTERN = 0x5EC2E7A1                      # every int32 of the payload: easy to find in a recording


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    return make_pki(d / "good", {1: "127.0.0.1", 2: "127.0.0.1"}), make_pki(d / "other", {1: "127.0.0.1"})


@pytest.fixture
def host(pki, monkeypatch):
    """This process acts as host 1 of the test PKI."""
    files = pki[0][1]
    for var, key in zip(ENV, ("cert", "key", "ca")):
        monkeypatch.setenv(var, str(files[key]))
    return files


class Recorder:
    """A TCP proxy on loopback that forwards both ways and keeps every byte (what a wire tap sees)."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.seen = target, bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        up = socket.create_connection(self.target)
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while chunk := a.recv(1 << 16):
                self.seen += chunk
                b.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def via(self, desc: ChannelDescriptor) -> ChannelDescriptor:
        return ChannelDescriptor(desc.name, desc.transport, desc.specs, desc.depth, desc.token,
                                 dict(desc.address, port=self.port), desc.config)


def stream_through_tap(tls: bool) -> tuple[bytes, dict, dict]:
    rx = create_receiver("tls:tap", SPECS, transport="tcp", tcp_host="127.0.0.1", tls=tls)
    tap = Recorder(("127.0.0.1", rx.descriptor.address["port"]))
    tx = attach_sender(tap.via(rx.descriptor))
    x = torch.full((64, 64), PATTERN, dtype=torch.int32)
    # the sender in its own thread, as a cell's outbox is: its TLS handshake needs the receiver reading
    sender = threading.Thread(target=lambda: [tx.send({"x": x}, {"sample": i}, timeout=10) for i in range(3)])
    sender.start()
    try:
        for i in range(3):
            with rx.recv(timeout=10) as msg:
                assert msg.meta["sample"] == i and torch.equal(msg.tensors["x"], x)
        sender.join(timeout=10)
        return bytes(tap.seen), rx.stats.snapshot(), tx.stats.snapshot()
    finally:
        sender.join(timeout=10)
        tx.close()
        rx.close()


def test_what_crosses_the_wire_is_encrypted_and_exact(host):
    needle = PATTERN.to_bytes(4, "little") * 16
    plain, rx_plain, _ = stream_through_tap(tls=False)
    assert needle in plain and rx_plain["tls"] is None          # the tap sees the tensor in clear...
    sealed, rx_stats, tx_stats = stream_through_tap(tls=True)
    assert needle not in sealed and len(sealed) > 3 * 64 * 64 * 4   # ...and only ciphertext with TLS
    assert rx_stats["tls"].startswith("TLSv1.") and tx_stats["tls"] == rx_stats["tls"]
    assert rx_stats["messages"] == 3 and rx_stats["rejected_connections"] == 0


def test_a_plain_or_foreign_peer_is_dropped_and_the_sender_gets_through(host, pki, monkeypatch):
    rx = create_receiver("tls:peers", SPECS, transport="tcp", tcp_host="127.0.0.1", tls=True, hello_timeout_s=5)
    desc = rx.descriptor
    errors: list[BaseException] = []

    def intruders() -> None:
        plain = attach_sender(desc, tls=False, connect_timeout_s=1.0)          # right secret, no TLS
        try:
            plain.send({"x": torch.zeros(64, 64, dtype=torch.int32)}, {"sample": 98}, timeout=2)
            plain.send({"x": torch.zeros(64, 64, dtype=torch.int32)}, {"sample": 98}, timeout=2)
            plain.send({"x": torch.zeros(64, 64, dtype=torch.int32)}, {"sample": 98}, timeout=2)
        except (ChannelError, OSError) as e:
            errors.append(e)
    t = threading.Thread(target=intruders)
    t.start()
    try:
        for _ in range(50):
            try:
                rx.recv(timeout=0.1).release()
                raise AssertionError("the plain sender got a message through")
            except ChannelTimeout:
                if rx.stats.rejected:
                    break
        t.join(timeout=30)
        assert rx.stats.rejected >= 1 and "TLS failed" in rx.stats.last_rejected and errors
        foreign = pki[1][1]                                     # a certificate another CA signed
        monkeypatch.setenv(ENV[0], str(foreign["cert"]))
        monkeypatch.setenv(ENV[1], str(foreign["key"]))
        bad = attach_sender(desc, connect_timeout_s=1.0)         # (its CA file is still the good one)
        errors.clear()
        t = threading.Thread(target=lambda: _send_or_note(bad, errors))
        t.start()
        rejected = rx.stats.rejected
        for _ in range(50):
            try:
                rx.recv(timeout=0.1).release()
                raise AssertionError("a foreign certificate got a message through")
            except ChannelTimeout:
                if rx.stats.rejected > rejected:
                    break
        t.join(timeout=30)
        assert "TLS failed" in rx.stats.last_rejected and errors and "TLS failed" in str(errors[0])
        monkeypatch.setenv(ENV[0], str(host["cert"]))
        monkeypatch.setenv(ENV[1], str(host["key"]))
        tx = attach_sender(desc)
        t = threading.Thread(target=lambda: tx.send({"x": torch.ones(64, 64, dtype=torch.int32)}, {"sample": 1},
                                                    timeout=10))
        t.start()
        with rx.recv(timeout=10) as msg:
            assert msg.meta["sample"] == 1
        t.join(timeout=10)
        tx.close()
    finally:
        rx.close()


def _send_or_note(tx, errors: list) -> None:
    try:
        tx.send({"x": torch.zeros(64, 64, dtype=torch.int32)}, {"sample": 97}, timeout=3)
    except (ChannelError, OSError) as e:
        errors.append(e)


def test_tls_without_files_is_one_line_naming_them(monkeypatch, tmp_path):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TlsUnavailable, match="RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT not set"):
        create_receiver("tls:none", SPECS, transport="tcp", tls=True)
    for var in ENV:
        monkeypatch.setenv(var, str(tmp_path / "absent.pem"))
    with pytest.raises(TlsUnavailable, match=r"RAY_TLS_SERVER_CERT=.*absent.pem: no such readable file"):
        tls_files()
