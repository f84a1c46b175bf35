"""A multi-host test bed on one machine: N hosts as network namespaces, each with its own address,
working directory, HOME, artifact store and Ray node; nothing shared but the kernel.

    with TestBed(hosts=3, devices=4) as bed:          # ray start --head on host 1, workers on the others
        r = bed.run(1, [sys.executable, "-m", "bidl_runtime.run", "--address", bed.address, ...])
        bed.kill_host(3)                               # every process of host 3, SIGKILL
        bed.cut_link(2)                                # host 2's link down (a partition); bed.heal_link(2)

Layout: a switch namespace holds a bridge; host i's namespace has one end of a veth pair (the other
end on the bridge) with address ``10.213.7.<i>`` in a private test subnet that exists only inside
these namespaces, and loopback up. Names carry this test bed's id (the creating process's pid), so
two test beds on one machine do not meet. Ray runs with token authentication: the token is written
to host 1's HOME and copied into each host's HOME as an operator would hand it over (a file).
Nothing else is shared: each host's environment drops the caller's Ray settings, artifact key and
XDG directories, so every host makes its own artifact key under its own HOME (shipping reseals
copies, see :mod:`bidl_runtime.cluster.ship`).

``tls=True``: Ray's TLS on every node and for every process started on a host (``RAY_USE_TLS=1`` and
the cert, key and CA variables): a CA made for this test bed signs one certificate per host (its
address and loopback as subject alternative names, server and client use); each host gets its own
key and certificate and the CA's certificate, never the CA's key (:func:`make_pki`).

Teardown (``close``, also after a failure or Ctrl-C): every process in each namespace is killed by
PID (``ip netns pids``), the namespaces are deleted (their veth ends and the bridge go with them),
the hosts' directories are removed, and channel files left in /dev/shm by those processes are
swept. A test bed whose creating process died without closing it (SIGKILL) is removed by the next
one made on the machine (:func:`sweep_stale_beds`). Where namespaces cannot be made (not root, no
``ip``), :func:`unavailable` says why.

As a script, for a person: ``python tests/cluster/testbed.py up --hosts 3`` (prints the addresses
and how to run a command on a host, then waits; Ctrl-C tears it all down) or ``... down ID`` to
remove a test bed left by a killed script.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

SUBNET = "10.213.7"          # private test subnet, only inside the test bed's namespaces
RAY_PORT = 6379
STORE_ENV = "BIDL_ARTIFACT_STORE"
OBJECT_STORE_BYTES = 256 << 20   # per host: artifacts and small results only (the data plane is ours)
# the caller's settings a host must not inherit: its own Ray, artifact key, caches and configuration
PRIVATE_ENV = re.compile(r"^(RAY_|BIDL_ARTIFACT_|XDG_)")
OWNER = "owner"              # in the test bed's root: "<pid> <start time>" of the process that made it


def unavailable() -> Optional[str]:
    """Why a test bed cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip command is missing"
    probe = f"bprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _start_time(pid: int) -> Optional[int]:
    """When process ``pid`` started (clock ticks since boot); None if there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(root: Path) -> bool:
    """Whether the process that made the test bed at ``root`` may still run: the same pid with the same
    start time, or no owner recorded (a bed being made right now, or one made by an older test bed:
    never taken for stale)."""
    try:
        pid, started = (int(v) for v in (root / OWNER).read_text().split())
    except (OSError, ValueError):
        return True
    return _start_time(pid) == started


def sweep_stale_beds() -> list[str]:
    """Remove test beds whose creating process is gone (killed before ``close``): their processes,
    namespaces and directories. Returns their ids."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    tags = {m.group(1) for ns in listed if (m := re.fullmatch(r"b(?:sw|h)(\d+)(?:-\d+)?", ns))}
    removed = []
    for tag in sorted(tags):
        roots = list(Path("/tmp").glob(f"bt{tag}-*"))
        if not roots or any(_owner_alive(r) for r in roots):    # no record of its owner: not ours to judge
            continue
        TestBed.adopt(tag, listed).close()
        removed.append(tag)
    return removed


def make_pki(directory: Path, hosts: dict[int, str]) -> dict[int, dict[str, Path]]:
    """A CA and one certificate per host (``{i: address}``), for Ray's TLS and the channels' TLS.

    Returns ``{i: {"cert", "key", "ca"}}``: host i's certificate (SANs: its address, 127.0.0.1,
    localhost; server and client use) and key, and the CA's certificate. The CA's key stays in
    ``directory`` (the test bed's, never a host's HOME); keys are written mode 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(path: Path, key) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bidl test bed CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    ca_path = directory / "ca.crt"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    write_key(directory / "ca.key", ca_key)
    out = {}
    for i, address in hosts.items():
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.IPAddress(ipaddress.ip_address(address)), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"host {i} ({address})")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        d = directory / f"h{i}"
        d.mkdir(exist_ok=True)
        (d / "host.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(d / "host.key", key)
        out[i] = {"cert": d / "host.crt", "key": d / "host.key", "ca": ca_path}
    return out


def _ip(*args: str, ns: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


@dataclass
class BidlRun:
    """What :meth:`TestBed.bidl_run` saw: exit code, output, JSON report, when it acted (epoch seconds)."""

    rc: int
    out: str
    report: Optional[dict]
    acted_at: Optional[float]


class TestBed:
    """N hosts (1-based), each a namespace with a Ray node; see the module doc."""

    __test__ = False   # not a pytest test class

    def __init__(self, hosts: int = 3, devices: int | Sequence[int] = 4, cpus: int = 1,
                 tag: Optional[str] = None, ray_start: bool = True, env: Optional[dict] = None,
                 tls: bool = False, sweep: bool = True, root: Optional[Path] = None):
        if not 1 <= hosts <= 20:
            raise ValueError(f"hosts={hosts}: expected 1..20")
        self.n = hosts
        self.devices = [devices] * hosts if isinstance(devices, int) else list(devices)
        if len(self.devices) != hosts:
            raise ValueError(f"devices={devices!r}: expected one count per host ({hosts})")
        self.cpus = cpus
        self.tls = tls
        self.tag = tag or str(os.getpid())
        self.ray_start = ray_start
        self.extra_env = dict(env or {})
        if sweep:
            sweep_stale_beds()
        if root is None:
            root = Path(tempfile.mkdtemp(prefix=f"bt{self.tag}-", dir="/tmp"))   # short: Ray's socket paths
            (root / OWNER).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        self.root = root
        self.switch = f"bsw{self.tag}"
        self.namespaces = [f"bh{self.tag}-{i}" for i in range(1, hosts + 1)]
        self.token = secrets.token_hex(32)
        self.pki: dict[int, dict[str, Path]] = {}
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []

    @classmethod
    def adopt(cls, tag: str, listed: Optional[list[str]] = None) -> "TestBed":
        """A handle on the test bed ``tag`` left by another process (to ``close`` it): its namespaces
        and its directory under /tmp, whatever remains of them."""
        if listed is None:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        roots = sorted(Path("/tmp").glob(f"bt{tag}-*"))
        for r in roots[1:]:
            shutil.rmtree(r, ignore_errors=True)
        bed = cls(hosts=1, tag=tag, ray_start=False, sweep=False, root=roots[0] if roots else Path(f"/tmp/bt{tag}-gone"))
        bed.made = [ns for ns in listed if ns == f"bsw{tag}" or ns.startswith(f"bh{tag}-")]
        return bed

    # ------------------------------------------------------------------------------ hosts

    def ns(self, i: int) -> str:
        return self.namespaces[i - 1]

    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i}"

    @property
    def address(self) -> str:
        """The Ray cluster's address (host 1's GCS)."""
        return f"{self.ip(1)}:{RAY_PORT}"

    def home(self, i: int) -> Path:
        return self.root / f"h{i}"

    def env(self, i: int) -> dict[str, str]:
        """Host i's environment: its HOME, token file, artifact store and Ray temp dir (and with
        ``tls``, its certificate, key and the CA's certificate); nothing of the caller's Ray settings,
        artifact key or XDG directories."""
        home = self.home(i)
        env = {k: v for k, v in os.environ.items() if not PRIVATE_ENV.match(k)}
        env.update({"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / "ray_token"),
                    STORE_ENV: str(home / "store"), "TMPDIR": str(home / "tmp"), "RAY_TMPDIR": str(home / "r"),
                    "PYTHONUNBUFFERED": "1"})
        if self.tls:
            tls = home / "tls"
            env.update({"RAY_USE_TLS": "1", "RAY_TLS_SERVER_CERT": str(tls / "host.crt"),
                        "RAY_TLS_SERVER_KEY": str(tls / "host.key"), "RAY_TLS_CA_CERT": str(tls / "ca.crt")})
        env.update(self.extra_env)
        return env

    def __enter__(self) -> "TestBed":
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def up(self) -> None:
        """Namespaces, links, addresses; then the Ray nodes (head first)."""
        _ip("netns", "add", self.switch)
        self.made.append(self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)
        for i in range(1, self.n + 1):
            ns, a, b = self.ns(i), f"b{self.tag}h{i}a", f"b{self.tag}h{i}b"
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            _ip("link", "set", a, "netns", ns)
            _ip("link", "set", b, "netns", self.switch)
            _ip("link", "set", b, "master", "br0", ns=self.switch)
            _ip("link", "set", b, "up", ns=self.switch)
            _ip("link", "set", "lo", "up", ns=ns)
            _ip("addr", "add", f"{self.ip(i)}/24", "dev", a, ns=ns)
            _ip("link", "set", a, "up", ns=ns)
            for d in ("store", "tmp", "r", "work"):
                (self.home(i) / d).mkdir(parents=True, exist_ok=True)
            tok = self.home(i) / "ray_token"       # handed over as a file, readable by its owner only
            tok.write_text(self.token + "\n")
            tok.chmod(0o600)
        if self.tls:
            self.pki = make_pki(self.root / "pki", {i: self.ip(i) for i in range(1, self.n + 1)})
            for i, files in self.pki.items():      # each host: its own key and certificate, the CA's certificate
                d = self.home(i) / "tls"
                d.mkdir(mode=0o700)
                shutil.copy(files["cert"], d / "host.crt")
                shutil.copy(files["ca"], d / "ca.crt")
                fd = os.open(d / "host.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(files["key"].read_bytes())
        if self.ray_start:
            self.start_ray(1)
            workers = [self.start(i, self.ray_start_argv(i)) for i in range(2, self.n + 1)]   # in parallel
            for i, p in zip(range(2, self.n + 1), workers):
                try:
                    out, _ = p.communicate(timeout=180)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, _ = p.communicate()
                if p.returncode != 0:
                    raise RuntimeError(f"ray start on host {i} failed: {(out or '')[-2000:]}")
            self.wait_nodes(self.n)

    def ray_start_argv(self, i: int) -> list[str]:
        """The ``ray start`` command of host i (the head on host 1, a worker joining it on the others)."""
        res = json.dumps({"bidl_device": self.devices[i - 1]})
        common = ["--node-ip-address", self.ip(i), "--num-cpus", str(self.cpus), "--resources", res,
                  "--object-store-memory", str(OBJECT_STORE_BYTES), "--temp-dir", str(self.home(i) / "r"),
                  "--disable-usage-stats"]
        args = (["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"] if i == 1
                else ["--address", self.address])
        return ["ray", "start", *args, *common]

    def start_ray(self, i: int) -> None:
        """``ray start`` on host i, to completion."""
        r = self.run(i, self.ray_start_argv(i), timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"ray start on host {i} failed: {(r.stdout + r.stderr)[-2000:]}")

    def wait_nodes(self, alive: int, timeout: float = 120.0) -> None:
        """Until ``alive`` nodes are alive in the cluster (asked from host 1)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.time() + timeout
        seen = "?"
        while time.time() < deadline:
            r = self.run(1, [sys.executable, "-c", code, self.address], timeout=60)
            seen = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
            if r.returncode == 0 and seen == str(alive):
                return
            time.sleep(1.0)
        raise RuntimeError(f"the test bed's cluster has {seen} alive nodes after {timeout:.0f} s, expected {alive}")

    # ------------------------------------------------------------------------------ commands

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i), *argv]

    def run(self, i: int, argv: Sequence[str], timeout: float = 600, cwd: Optional[Path] = None,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on host i (in its working directory, with its environment) to completion."""
        return subprocess.run(self.command(i, argv), cwd=cwd or self.home(i) / "work", env={**self.env(i), **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def start(self, i: int, argv: Sequence[str], cwd: Optional[Path] = None, env: Optional[dict] = None,
              **popen) -> subprocess.Popen:
        """Start ``argv`` on host i (stdout and stderr merged unless ``popen`` says otherwise)."""
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.STDOUT)
        p = subprocess.Popen(self.command(i, argv), cwd=cwd or self.home(i) / "work",
                             env={**self.env(i), **(env or {})}, text=True, **popen)
        self.procs.append(p)
        return p

    def bidl_run(self, args: Sequence[str], action: Optional[Callable[["TestBed"], None]] = None,
                 delay: float = 3.0, then: Optional[Callable[["TestBed", list[str]], None]] = None,
                 timeout: float = 900, report: str = "report.json") -> "BidlRun":
        """``bidl-run --address`` on host 1 with ``args`` and ``--json``; ``action(bed)`` ``delay`` s after
        streaming starts (its ``data:`` line), ``then(bed, lines)`` right after that. Returns the exit
        code, the output (stdout and stderr), the JSON report (None if none) and when it acted."""
        path = self.home(1) / "work" / report
        path.unlink(missing_ok=True)
        p = self.start(1, [sys.executable, "-m", "bidl_runtime.run", "--address", self.address, *args,
                           "--json", str(path)])
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
        reader.start()
        acted = None
        try:
            if action is not None:
                deadline = time.time() + timeout
                while (not any(line.startswith("data:") for line in list(lines)) and p.poll() is None
                       and time.time() < deadline):
                    time.sleep(0.1)
                if p.poll() is None:
                    time.sleep(delay)
                    acted = time.time()
                    action(self)
                    if then is not None:
                        then(self, lines)
            p.wait(timeout=max(1.0, timeout))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        reader.join(timeout=10)
        return BidlRun(p.returncode, "".join(lines), json.loads(path.read_text()) if path.is_file() else None, acted)

    def cell_processes(self, i: int) -> list[int]:
        """PIDs of grid cells (Ray workers running a ``Cell``) on host i."""
        out = []
        for pid in self.pids(i):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "Cell" in cmd:
                out.append(pid)
        return out

    def pids(self, i: int) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", self.ns(i)], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def kill_host(self, i: int) -> list[int]:
        """SIGKILL every process of host i (its raylet, its workers and cells); the PIDs killed."""
        killed: list[int] = []
        for _ in range(5):   # bounded: a process may fork while we kill
            pids = [p for p in self.pids(i) if p not in killed]
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed += pids
            time.sleep(0.05)
        return killed

    def cut_link(self, i: int) -> None:
        """Host i's link down (its processes live on, unreachable): a partition."""
        _ip("link", "set", f"b{self.tag}h{i}a", "down", ns=self.ns(i))

    def heal_link(self, i: int) -> None:
        _ip("link", "set", f"b{self.tag}h{i}a", "up", ns=self.ns(i))

    # ------------------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Kill every process of the test bed, delete its namespaces and directories (idempotent)."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
        for ns in list(self.made):
            for _ in range(3):   # bounded: a process may fork while we kill
                r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
                pids = [int(x) for x in r.stdout.split()]
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.2)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made = []
        shutil.rmtree(self.root, ignore_errors=True)
        _sweep_shm()

    def leftovers(self) -> list[str]:
        """Anything of this test bed still present (namespaces, links, directories): empty after close."""
        out = []
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        out += [ns for ns in [self.switch, *self.namespaces] if ns in listed.split()]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        out += [f"link b{self.tag}h*" for _ in [0] if f"b{self.tag}h" in links]
        if self.root.exists():
            out.append(str(self.root))
        return out


def _sweep_shm() -> None:
    """Channel slot files of processes that are gone (the test bed's cells)."""
    try:
        from bidl_runtime.channels import sweep_stale
        sweep_stale()
    except Exception:  # noqa: BLE001 - best effort at teardown
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="testbed", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="make a test bed and keep it until Ctrl-C")
    up.add_argument("--hosts", type=int, default=3)
    up.add_argument("--devices", type=int, default=4, help="bidl_device resources per host")
    up.add_argument("--tls", action="store_true", help="Ray's TLS on every node (certificates made for the bed)")
    down = sub.add_parser("down", help="remove the namespaces and files of a test bed left behind")
    down.add_argument("id", help="its id (the number in its namespace names, bh<ID>-1)")
    args = ap.parse_args(argv)
    why = unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.cmd == "down":
        if not re.fullmatch(r"\d+", args.id):
            print(f"error: test bed id {args.id!r}: expected the number in its namespace names", file=sys.stderr)
            return 2
        TestBed.adopt(args.id).close()
        print(f"removed test bed {args.id}")
        return 0

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)   # kill PID tears it down like Ctrl-C
    with TestBed(hosts=args.hosts, devices=args.devices, tls=args.tls) as bed:
        print(f"test bed {bed.tag}: {bed.n} hosts, Ray at {bed.address} (token auth{', TLS' if bed.tls else ''})")
        for i in range(1, bed.n + 1):
            print(f"  host {i}: {bed.ip(i)}  netns {bed.ns(i)}  HOME {bed.home(i)}")
        env = " ".join(f"{k}={v}" for k, v in bed.env(1).items() if k.startswith(("RAY_", "HOME", STORE_ENV)))
        hosts = ",".join(f"{bed.ip(i)}={bed.devices[i - 1]}" for i in range(1, bed.n + 1))
        print(f"run on host 1: ip netns exec {bed.ns(1)} env {env} bidl-run --address {bed.address} "
              f"--hosts {hosts} --grid 2x2{' --tls' if bed.tls else ''}")
        print("Ctrl-C (or kill -TERM) tears it down", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
