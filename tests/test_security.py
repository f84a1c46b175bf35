"""Security: the embedded cluster admits only token holders and listens on loopback only; intruders
on a live grid's ports do not disturb the run; an artifact edited consistently (program and its
recorded hash) is refused."""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import msgpack
import pytest
import ray

from bidl_runtime.api import GridJob
from bidl_runtime.channels import Layout, auth, new_secret
from bidl_runtime.cluster.cleanup import descendants
from bidl_runtime.cluster.ray_cluster import LOOPBACK, dashboard_agent_port, start_local
from bidl_runtime.runtime_config import RuntimeConfig
from bidl_runtime.driver.grid import Grid
from compile import ArtifactError, compile_config, load_artifact
from conftest import glyph_samples, template_workers, tiny_glyphs
from compile.artifact import MANIFEST, PROGRAM, seal_manifest

T, N = 4, 6


STARTS_RAY = ('cluster',)   # conftest marks the tests that use it slow


@pytest.fixture(scope="module")
def cluster():
    with template_workers():
        ctx = start_local(num_cpus=2, resources={"bidl_device": 4}, include_dashboard=False, log_to_driver=False,
                          logging_level="WARNING", namespace="test-security")
    yield ctx
    ray.shutdown()


def cfg():
    return tiny_glyphs(T)


# ------------------------------------------------------------------------- who listens where

def _tree(root: int) -> set[int]:
    """``root`` and all its descendants (Ray's GCS, raylet, agents and workers descend from the driver)."""
    return {root} | descendants(root)


def _ip(hexaddr: str) -> ipaddress._BaseAddress:
    b = bytes.fromhex(hexaddr)
    if len(b) == 4:
        return ipaddress.IPv4Address(b[::-1])
    return ipaddress.IPv6Address(b"".join(b[i:i + 4][::-1] for i in range(0, 16, 4)))


def tcp_listeners(pids: set[int]) -> list[tuple[str, int, int, str]]:
    """``(address, port, pid, process name)`` of every listening TCP socket held by ``pids`` (from /proc,
    what ``ss -ltnp`` shows)."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[int(link[8:-1])] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or int(f[9]) not in owner:   # 0A: LISTEN
                continue
            addr, port = f[1].split(":")
            ip = _ip(addr)
            ip = getattr(ip, "ipv4_mapped", None) or ip
            pid = owner[int(f[9])]
            try:
                comm = open(f"/proc/{pid}/comm").read().strip()
            except OSError:
                comm = "?"
            out.append((str(ip), int(port, 16), pid, comm))
    return sorted(out)


def test_every_ray_service_listens_on_loopback_only(cluster):
    ours = _tree(os.getpid())
    listeners = tcp_listeners(ours)
    print("\n".join(f"{a}:{p} {c} (pid {pid})" for a, p, pid, c in listeners))
    names = {c for *_, c in listeners}
    assert {"gcs_server", "raylet"} <= names, listeners   # the check saw Ray's services
    assert len(listeners) >= 6, listeners
    off = [x for x in listeners if not ipaddress.ip_address(x[0]).is_loopback]
    assert off == [], f"listening beyond loopback: {off}"
    gcs_port = int(cluster.address_info["gcs_address"].rsplit(":", 1)[1])
    assert cluster.address_info["gcs_address"] == f"{LOOPBACK}:{gcs_port}"
    from ray._common.network_utils import node_ip_address_from_perspective
    outside = node_ip_address_from_perspective(None)
    if not ipaddress.ip_address(outside).is_loopback:   # the machine's own address: nothing of ours there
        everyone = {int(d) for d in os.listdir("/proc") if d.isdigit()}
        taken = {p for a, p, pid, _ in tcp_listeners(everyone - ours) if not ipaddress.ip_address(a).is_loopback}
        for _, port, _, _ in listeners:
            if port in taken:   # another user's process holds this port number there (e.g. its own Ray)
                continue
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outside, port), timeout=5).close()


# ------------------------------------------------------------------ unauthenticated clients

INTRUDER = r"""
import os, sys
import ray
try:
    if sys.argv[3] == "join":   # the CLI's --address path: turns token mode on when Ray finds a token
        from bidl_runtime.cluster.ray_cluster import join
        join(sys.argv[1], log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
except Exception as e:
    print("REFUSED", type(e).__name__, e, flush=True)
    sys.exit(0)
@ray.remote(num_cpus=0)
def run_code(path):
    open(path, "w").write(str(os.getuid()))
    return os.getpid()
print("CONNECTED, ran code in pid", ray.get(run_code.remote(sys.argv[2]), timeout=60), flush=True)
"""


def test_unauthenticated_clients_are_refused(cluster, tmp_path):
    """``ray.init(address=<gcs>)`` without the token (none, auth disabled, a wrong one) is refused by the
    GCS; the same client with the token runs code (the control that the check can fail). A job
    submitted to the dashboard agent without the token is refused too."""
    gcs = cluster.address_info["gcs_address"]
    (tmp_path / "intruder.py").write_text(INTRUDER)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base.update(HOME=str(tmp_path),                        # no ~/.ray/auth_token to fall back on
                RAY_gcs_server_port_wait_time_s="3",       # give up after 3 tries, not 20 s
                RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")     # dial 127.0.0.1 as given (not the node's address)
    cases = {
        "no token": {},
        "auth disabled": {"RAY_AUTH_MODE": "disabled"},
        "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
        "the token (control)": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": os.environ["RAY_AUTH_TOKEN_PATH"]},
        "the token via cluster.join (control)": {"RAY_AUTH_TOKEN_PATH": os.environ["RAY_AUTH_TOKEN_PATH"]},
    }
    procs = {name: subprocess.Popen([sys.executable, str(tmp_path / "intruder.py"), gcs,
                                     str(tmp_path / f"ran-{i}"), "join" if "join" in name else "init"],
                                    env=dict(base, **extra),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, (name, extra) in enumerate(cases.items())}
    out = {name: p.communicate(timeout=180)[0] for name, p in procs.items()}
    for i, name in enumerate(cases):
        ran = (tmp_path / f"ran-{i}").exists()
        if name.endswith("(control)"):
            assert "CONNECTED" in out[name] and ran, out[name][-2000:]
        else:
            assert "REFUSED" in out[name] and not ran, f"{name}: {out[name][-2000:]}"
            assert "Unauthenticated" in out[name] or "InvalidAuthToken" in out[name], out[name][-2000:]

    port = dashboard_agent_port()
    if port is None:
        pytest.skip("the dashboard agent's HTTP server is off in this cluster (nothing to submit a job to)")
    url = f"http://{LOOPBACK}:{port}/api/job_agent/jobs/"
    body = json.dumps({"entrypoint": f"touch {tmp_path / 'job-ran'}"}).encode()
    for headers, code in (({}, 401), ({"Authorization": f"Bearer {secrets.token_hex(32)}"}, 403)):
        req = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=30)
        assert ei.value.code == code  # 401: no token, 403: a wrong one
    time.sleep(1)
    assert not (tmp_path / "job-ran").exists()


# ---------------------------------------------------------------------- intruders, live grid

def _attack(host: str, port: int, data: bytes | None, hold: list) -> None:
    try:
        s = socket.create_connection((host, port), timeout=2)
    except OSError:
        return
    if data:
        try:
            s.sendall(data)
        except OSError:
            pass
    hold.append(s)


def test_intruders_on_a_live_grid_do_not_disturb_the_run(cluster, tiny_artifacts):
    """A 2x2 grid over tcp: before the run, the driver's result receiver (still listening) gets garbage,
    an oversized length prefix, half a frame, a wrong-secret hello and a silent connection; during the
    run every TCP port of the whole cluster (Ray's included) gets garbage and half frames. The run's
    outputs are the single-device reference's, bit for bit. The receiver takes its sender, queued ahead
    of the intruders, as it accepts it, so it never reads them: each one is dropped and counted, or
    reset when the listener closes; none gets a byte back."""
    c = cfg()
    rcfg = RuntimeConfig(metrics=False, transport="tcp")
    plan = GridJob(c, grid=(2, 2), runtime=rcfg, artifacts=tiny_artifacts).plan()
    items = glyph_samples(T, N, seed=3)
    hold: list[socket.socket] = []
    attacks: list = []
    seen: dict = {}

    class AttackedGrid(Grid):
        """Attacks the driver's result receiver once the run's channels are wired, before any sample."""

        def wire(self) -> None:
            super().wire()
            rx = seen["rx"] = self.results[0]
            desc = rx.descriptor
            host, port = desc.address["host"], desc.address["port"]
            assert host == LOOPBACK
            bad_hello, _ = auth.hello(bytes.fromhex(new_secret()), desc.name, desc.token,
                                      Layout(desc.specs).fingerprint, 1)
            body = msgpack.packb(bad_hello, use_bin_type=True)
            attacks.extend([os.urandom(256), struct.pack("!I", 2**31 - 1) + b"\0" * 32,
                            struct.pack("!I", 300) + b"\x92" * 40, struct.pack("!I", len(body)) + body, None])
            for data in attacks:
                _attack(host, port, data, hold)

    def flood() -> None:  # every TCP port the cluster listens on, while the samples stream
        for addr, p, _, _ in tcp_listeners(_tree(os.getpid())):
            for data in (os.urandom(512), struct.pack("!I", 2**31 - 1), struct.pack("!I", 64) + b"\x93"):
                _attack(addr, p, data, hold)

    def samples():
        for i, item in enumerate(items):
            if i == 2:
                flood()
            yield item

    g = AttackedGrid(plan, rcfg)
    answers = []
    try:
        report = g.run(samples(), progress=False, verify=True)
        for s in hold[:len(attacks)]:   # the result receiver's intruders
            s.settimeout(5)
            try:
                answers.append(s.recv(64))
            except ConnectionResetError:
                answers.append(b"")
    finally:
        g.close()
        for s in hold:
            s.close()
    rx = seen["rx"]
    assert report.verify == {"equal": N, "compared": N, "max_abs_diff": 0.0}
    assert list(report.outputs) == list(range(N))
    assert rx.stats.rejected <= len(attacks) == 5, rx.stats.last_rejected
    assert answers == [b""] * len(attacks)
    assert rx.peer is not None and all(c["samples"] == N for c in report.cells)


# ------------------------------------------------------------------------------- artifacts

def test_consistently_edited_artifact_is_refused(tmp_path):
    """Program bytes changed and the manifest's sha256 (and size) updated to match: the keyed digest
    refuses it, before the program is deserialised, at load and at cache reuse; resealing with the
    key (what only its holder can do) is what it takes to load."""
    c = cfg()
    out = tmp_path / "art"
    cm = compile_config(c, None, rows=1, out=out, progress=False, verbose=False)
    d = cm.path(0, T)
    assert load_artifact(d).manifest.seal["alg"] == "hmac-sha256"
    prog = d / PROGRAM
    data = bytearray(prog.read_bytes())
    data[len(data) // 2] ^= 0x01
    prog.write_bytes(bytes(data))
    man = json.loads((d / MANIFEST).read_text())
    from bidl_models.checkpoint import file_sha256
    man["program"] = dict(man["program"], sha256=file_sha256(prog), bytes=len(data))
    (d / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="keyed digest does not match") as ei:
        load_artifact(d)
    assert ei.value.reason == "corrupt" and ei.value.path.endswith(MANIFEST)
    with pytest.raises(ArtifactError, match="keyed digest does not match"):
        compile_config(c, None, rows=1, out=out, progress=False, verbose=False)
    (d / MANIFEST).write_text(json.dumps({k: v for k, v in man.items() if k != "seal"}))
    with pytest.raises(ArtifactError, match="no keyed digest"):
        load_artifact(d)
    (d / MANIFEST).write_text(json.dumps(seal_manifest(man)))   # the key holder's reseal: the seal passes
    try:
        load_artifact(d)                                         # (the flipped byte may or may not load)
    except ArtifactError as e:
        assert "keyed digest" not in str(e) and "seal" not in str(e), e
    cm = compile_config(c, None, rows=1, out=out, force=True, progress=False, verbose=False)
    assert load_artifact(cm.path(0, T)).chunk_len == T


def test_artifact_sealed_with_another_key_is_refused(tmp_path, monkeypatch):
    c = cfg()
    cm = compile_config(c, None, rows=1, out=tmp_path / "art", progress=False, verbose=False)
    monkeypatch.setenv("BIDL_ARTIFACT_KEY_FILE", str(tmp_path / "other.key"))
    with pytest.raises(ArtifactError, match="sealed with another artifact key") as ei:
        load_artifact(cm.path(0, T))
    assert ei.value.reason == "incompatible"
    assert oct((tmp_path / "other.key").stat().st_mode & 0o777) == "0o600"
