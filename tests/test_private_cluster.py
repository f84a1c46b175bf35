"""Issue 24: without ``--address`` the main job always starts a new, private Ray cluster, whatever Ray
state the machine has (a stale ``ray_current_cluster`` file, ``RAY_ADDRESS`` naming a dead cluster,
someone else's live cluster started with ``ray start``), leaves that state alone, and removes its own
temp dir; with ``--address``, a dead or unreachable cluster is one line naming the address and what
was tried.

Each case runs in a sandbox: a short temp dir that is the subprocesses' ``RAY_TMPDIR`` (so "the
machine's Ray state", ``$RAY_TMPDIR/ray``, is the sandbox's, not the shared ``/tmp/ray``) and ``HOME``.
The foreign cluster is stopped by the PIDs of its own process tree (never ``ray stop``).
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bidl_runtime.cluster import ray_cluster as cluster
from bidl_runtime.processes import alive   # running, not a zombie

# the cpu backend: these tests are about which cluster a run starts or joins (test_cli runs the default backend)
RUN = [sys.executable, "-m", "bidl_runtime.run", "--grid", "1x1", "--samples", "4", "--backend", "cpu"]
JOIN = r"""
import sys
from bidl_runtime.cluster.ray_cluster import ClusterError, join
try:
    join(sys.argv[1], log_to_driver=False, logging_level="ERROR")
except ClusterError as e:
    print("REFUSED", e, flush=True)
"""
PROBE = r"""
import sys
from bidl_runtime.cluster.ray_cluster import probe
import ray
probe(sys.argv[1])
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print("NODES", len(ray.nodes()), flush=True)
"""


@pytest.fixture
def sandbox():
    """A short private temp dir (Ray's socket paths must fit below it), removed afterwards."""
    d = Path(tempfile.mkdtemp(prefix="i24-", dir="/tmp"))
    (d / "home").mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


def user_env(sandbox: Path, **extra: str) -> dict[str, str]:
    """A user's environment on a machine whose Ray state is the sandbox's: no Ray variables of this
    test session (its token included) unless given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_TMPDIR=str(sandbox), HOME=str(sandbox / "home"), PYTHONUNBUFFERED="1", RAY_DEDUP_LOGS="0")
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    import ray  # noqa: F401 - brings its psutil
    import psutil
    try:
        return {root} | {c.pid for c in psutil.Process(root).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Foreign:
    """Someone else's cluster on this machine: ``ray start --head --block`` with its own token, temp
    dir (``<sandbox>/ray``, where it records itself in ``ray_current_cluster``) and ports."""

    def __init__(self, sandbox: Path):
        self.token = secrets.token_hex(32)
        self.env = user_env(sandbox, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")   # its node on 127.0.0.1 only
        self.record = sandbox / "ray" / "ray_current_cluster"
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli), "start", "--head", "--block", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
               "--num-cpus=1", "--include-dashboard=false", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", "--disable-usage-stats"]
        self.log = open(sandbox / "foreign.log", "w+")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        t0 = time.monotonic()
        while not (self.record.exists() and self.record.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() - t0 > 120:
                self.stop()
                pytest.fail(f"the foreign cluster did not start: {self.output()[-2000:]}")
            time.sleep(0.2)
        self.address = self.record.read_text().strip()
        self.core = self.services()
        assert {"gcs_server", "raylet"} <= set(self.core.values()), self.core

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def services(self) -> dict[int, str]:
        """Its GCS and raylet processes: pid -> name."""
        return {p: comm(p) for p in descendants(self.proc.pid) if comm(p) in ("gcs_server", "raylet")}

    def check_untouched(self) -> None:
        """Same GCS and raylet processes, still answering its token, still one node."""
        assert self.services() == self.core, (self.core, self.services())
        r = subprocess.run([sys.executable, "-c", PROBE, self.address], env=self.env, capture_output=True,
                           text=True, timeout=180)
        assert "NODES 1" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]

    def stop(self) -> None:
        """SIGTERM its whole process tree (by PID), then SIGKILL what is left after 15 s."""
        tree = descendants(self.proc.pid)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in tree:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            t0 = time.monotonic()
            while time.monotonic() - t0 < 15 and any(alive(p) for p in tree):
                self.proc.poll()
                time.sleep(0.2)
        self.proc.wait(timeout=10)
        self.log.close()


def run_main(env: dict, artifacts: Path, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run(RUN + ["--artifacts", str(artifacts), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=str(artifacts.parent))


def assert_streamed(r: subprocess.CompletedProcess, sandbox: Path) -> None:
    """Exit 0, outputs bit-exact, on its own private cluster, whose temp dir is gone afterwards."""
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "outputs equal reference: 4/4 samples bit-exact" in r.stdout, out[-4000:]
    assert "embedded private cluster on 127.0.0.1 (session " + str(sandbox / cluster.PRIVATE_PREFIX) in r.stdout
    assert not list(sandbox.glob(cluster.PRIVATE_PREFIX + "*")), "the run left its private temp dir"


# ----------------------------------------------------------------------------- the main job

@pytest.mark.slow
def test_stale_current_cluster_file_is_ignored(sandbox, artifacts):
    """What a killed run leaves: Ray's ``ray_current_cluster`` naming a cluster that is gone."""
    stale = sandbox / "ray" / "ray_current_cluster"
    stale.parent.mkdir()
    stale.write_text(f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    r = run_main(user_env(sandbox), artifacts)
    print(f"run beside a stale ray_current_cluster: {time.monotonic() - t0:.1f} s")
    assert_streamed(r, sandbox)
    assert stale.read_text().startswith("127.0.0.1:")   # not ours to touch


@pytest.mark.slow
def test_ray_address_is_ignored_without_the_flag(sandbox, artifacts):
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = run_main(user_env(sandbox, RAY_ADDRESS=dead), artifacts)
    print(f"run with RAY_ADDRESS={dead}: {time.monotonic() - t0:.1f} s")
    assert_streamed(r, sandbox)
    assert f"note: RAY_ADDRESS={dead} ignored" in r.stderr and "--address auto" in r.stderr


@pytest.mark.slow
def test_runs_beside_a_live_foreign_cluster_and_leaves_it_alone(sandbox, artifacts):
    """``ray start`` by someone else (own token, recorded as the machine's current cluster), and
    RAY_ADDRESS naming it: the run starts its own cluster; the foreign one keeps its processes and
    its single node, and still answers its own token."""
    foreign = Foreign(sandbox)
    try:
        t0 = time.monotonic()
        r = run_main(user_env(sandbox, RAY_ADDRESS=foreign.address), artifacts)
        print(f"run beside the foreign cluster at {foreign.address}: {time.monotonic() - t0:.1f} s")
        assert_streamed(r, sandbox)
        assert foreign.address not in r.stdout
        assert foreign.record.read_text().strip() == foreign.address
        foreign.check_untouched()
        r = subprocess.run([sys.executable, "-c", JOIN, foreign.address], env=user_env(sandbox), capture_output=True,
                           text=True, timeout=300)   # --address without its token: one line saying so
        assert (f"REFUSED --address {foreign.address}: its Ray GCS answered, then joining failed: it refused this "
                "process's token (none found)") in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    finally:
        foreign.stop()
    assert not any(alive(p) for p in foreign.core), "the foreign cluster's processes outlived its stop"


# ------------------------------------------------------------------------------- --address

@pytest.mark.slow
def test_dead_address_is_one_line_naming_it(sandbox, artifacts):
    """The CLI with ``--address`` naming a dead cluster, given or through ``auto`` and RAY_ADDRESS: exit 1,
    one line naming the address and what was tried (the run waits for its artifacts: slow on a cold
    cache; :func:`test_join_errors_in_process` checks the same lines in a second)."""
    dead = f"127.0.0.1:{free_port()}"
    r = run_main(user_env(sandbox), artifacts, "--address", dead, timeout=300)
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1, r.stderr[-3000:]
    assert err == (f"error: --address {dead}: cannot join a Ray cluster there: nothing listens on {dead} "
                   "(TCP connection refused): is the cluster running?"), err

    r = run_main(user_env(sandbox, RAY_ADDRESS=dead), artifacts, "--address", "auto", timeout=300)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        f"error: --address auto (RAY_ADDRESS={dead}): cannot join a Ray cluster there: nothing listens"), r.stderr


def test_join_errors_in_process(sandbox, monkeypatch):
    """The same checks without a subprocess: a silent TCP server (not a GCS) within the probe's bound,
    an unknown host, ``auto`` with neither RAY_ADDRESS nor a recorded cluster, a malformed address."""
    monkeypatch.setenv("RAY_TMPDIR", str(sandbox))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(cluster.ClusterError, match=r"accepts TCP connections but answered nothing to a gRPC "
                                                       r"hello within 1 s: not a Ray GCS port"):
            cluster.probe(addr, timeout_s=1.0)
        assert time.monotonic() - t0 < 10
    with pytest.raises(cluster.ClusterError, match=r"--address no-such-host.invalid:6379: .*host "
                                                   r"'no-such-host.invalid' not found"):
        cluster.join("no-such-host.invalid:6379")
    with pytest.raises(cluster.ClusterError, match=r"--address auto: RAY_ADDRESS is not set and no cluster "
                                                   r"started with `ray start` is recorded in " + str(sandbox)):
        cluster.join("auto")
    (sandbox / "ray").mkdir()
    (sandbox / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    with pytest.raises(cluster.ClusterError, match=r"--address auto \(127\.0\.0\.1:\d+, recorded by `ray start` "
                                                   r"in .*ray_current_cluster\): cannot join .* connection refused"):
        cluster.join("auto")
    with pytest.raises(ValueError, match=r"--address 'nonsense': expected HOST:PORT"):
        cluster.join("nonsense")
    with pytest.raises(ValueError, match="--address local: not a cluster to join"):
        cluster.join("local")
    import ray
    assert not ray.is_initialized()


# --------------------------------------------------------------------------- private dirs

KILLED = r"""
import os, sys
from bidl_runtime.cluster import ray_cluster as cluster
cluster.secure_env()                      # makes the token in this process's private dir
print(cluster.private_dir(), flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), 9)
"""


def test_private_dir_removed_at_exit_and_swept_after_a_kill(sandbox, monkeypatch):
    """A process's private dir (token, Ray sessions) goes at exit; a killed process's stays until the
    next start on the machine sweeps it; a live process's and other files are left alone."""
    env = user_env(sandbox)
    r = subprocess.run([sys.executable, "-c", KILLED, "exit"], env=env, capture_output=True, text=True, timeout=120)
    made = Path(r.stdout.strip())
    assert made.parent == sandbox and made.name.startswith(cluster.PRIVATE_PREFIX), r.stdout + r.stderr
    assert not made.exists()
    r = subprocess.run([sys.executable, "-c", KILLED, "kill"], env=env, capture_output=True, text=True, timeout=120)
    killed = Path(r.stdout.strip())
    assert r.returncode == -9 and (killed / "token").is_file() and oct(killed.stat().st_mode & 0o777) == "0o700"
    live = Path(tempfile.mkdtemp(prefix=cluster.PRIVATE_PREFIX, dir=sandbox))
    started = cluster._start_time(os.getpid())
    (live / cluster.OWNER_FILE).write_text(f"{os.getpid()} {started}\n")
    reused = Path(tempfile.mkdtemp(prefix=cluster.PRIVATE_PREFIX, dir=sandbox))   # our pid, another start time
    (reused / cluster.OWNER_FILE).write_text(f"{os.getpid()} {started - 1}\n")
    other = sandbox / "bidl-ray-notadir1"
    other.write_text("a file, not a private dir")
    assert sorted(cluster.sweep_private(sandbox)) == sorted([str(killed), str(reused)])
    assert live.is_dir() and other.is_file()
    (live / "session_latest").mkdir()
    assert cluster.latest_session() != live / "session_latest"   # RAY_TMPDIR here is not the sandbox
    monkeypatch.setenv("RAY_TMPDIR", str(sandbox))
    assert cluster.latest_session() == live / "session_latest"


def test_temp_base_falls_back_to_tmp_when_too_long(monkeypatch, capsys):
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "x" * 60)
    assert cluster.temp_base() == Path("/tmp")
    assert "exceed 107 bytes" in capsys.readouterr().err
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/short")
    assert cluster.temp_base() == Path("/tmp/short")
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert cluster.temp_base() == Path("/tmp")
