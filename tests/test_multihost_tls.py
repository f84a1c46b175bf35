"""Encryption between hosts (``--tls``): a test bed whose Ray nodes run with TLS (a CA made for it, one
certificate per host), a grid across its two hosts with TLS on the tcp channels, bit-exact; the Ray
control plane answers TLS only, the channels report their TLS protocol, the HMAC hello still applies."""
from __future__ import annotations

import sys

import pytest

from cluster.testbed import RAY_PORT, TestBed, unavailable
from test_multihost import GRID

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]


@pytest.fixture(scope="module")
def bed():
    with TestBed(hosts=2, devices=2, cpus=1, tls=True) as b:
        yield b
    assert not b.leftovers(), b.leftovers()


def test_ray_answers_tls_only(bed):
    """Ray's GCS on host 1 completes a TLS handshake with a host's certificate, and does not speak plain
    gRPC (what a node or driver without TLS would try)."""
    files = bed.pki[2]
    code = ("import socket, ssl, sys; ctx = ssl.create_default_context(cafile=sys.argv[3]); "
            "ctx.load_cert_chain(sys.argv[4], sys.argv[5]); "
            "s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5), "
            "server_hostname=sys.argv[1]); print(s.version())")
    r = bed.run(2, [sys.executable, "-c", code, bed.ip(1), str(RAY_PORT), str(files["ca"]), str(files["cert"]),
                    str(files["key"])], timeout=60)
    assert r.returncode == 0 and r.stdout.strip().startswith("TLSv1."), r.stdout + r.stderr
    r = bed.run(2, [sys.executable, "-c", "import sys; from bidl_runtime.cluster.ray_cluster import probe; "
                    "import os; os.environ.pop('RAY_USE_TLS'); probe(sys.argv[1])", bed.address], timeout=60)
    said = r.stderr + r.stdout
    assert r.returncode != 0 and ("does not answer as a gRPC server" in said or "answered nothing" in said), said[-2000:]


def test_a_grid_across_hosts_with_tls_on_its_channels_equals_its_reference(bed):
    a, b = bed.ip(1), bed.ip(2)
    n = 8
    r = bed.bidl_run([*GRID, "--grid", "2x2", "--hosts", f"{a}=2,{b}=2", "--tls", "--samples", str(n)])
    assert r.rc == 0, r.out[-4000:]
    rep = r.report
    assert rep["verify"] == {"equal": n, "compared": n, "max_abs_diff": 0.0}
    tcp = [s for c in rep["cells"] for side in ("channels_in", "channels_out") for s in c[side].values()
           if s["transport"] == "tcp"]
    assert tcp and all((s["tls"] or "").startswith("TLSv1.") for s in tcp), tcp
    assert all(s["messages"] == n for s in tcp if s["role"] == "receiver")
    assert all(s["rejected_connections"] == 0 and s["fenced"] == 0 for s in tcp)
