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

Teardown (``close``, also after a failure or Ctrl-C): every process in each namespace is killed by
PID (``ip netns pids``), the namespaces are deleted (their veth ends and the bridge go with them),
the hosts' directories are removed, and channel files left in /dev/shm by those processes are
swept. Where namespaces cannot be made (not root, no ``ip``), :func:`unavailable` says why.

As a script, for a person: ``python tests/cluster/testbed.py up --hosts 3`` (prints the addresses
and how to run a command on a host, then waits; Ctrl-C tears it all down) or ``... down ID`` to
remove a test bed left by a killed script.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

SUBNET = "10.213.7"          # private test subnet, only inside the test bed's namespaces
RAY_PORT = 6379
STORE_ENV = "BIDL_ARTIFACT_STORE"


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


def _ip(*args: str, ns: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


class TestBed:
    """N hosts (1-based), each a namespace with a Ray node; see the module doc."""

    __test__ = False   # not a pytest test class

    def __init__(self, hosts: int = 3, devices: int | Sequence[int] = 4, cpus: int = 1,
                 tag: Optional[str] = None, ray_start: bool = True, env: Optional[dict] = None):
        if not 1 <= hosts <= 20:
            raise ValueError(f"hosts={hosts}: expected 1..20")
        self.n = hosts
        self.devices = [devices] * hosts if isinstance(devices, int) else list(devices)
        self.cpus = cpus
        self.tag = tag or f"{os.getpid() % 100000}"
        self.ray_start = ray_start
        self.extra_env = dict(env or {})
        self.root = Path(tempfile.mkdtemp(prefix=f"bt{self.tag}-", dir="/tmp"))   # short: Ray's socket paths
        self.switch = f"bsw{self.tag}"
        self.namespaces = [f"bh{self.tag}-{i}" for i in range(1, hosts + 1)]
        self.token = secrets.token_hex(32)
        self.made: list[str] = []
        self.procs: list[subprocess.Popen] = []

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
        """Host i's environment: its HOME, token file, artifact store and Ray temp dir."""
        home = self.home(i)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(home / "ray_token"),
                    STORE_ENV: str(home / "store"), "TMPDIR": str(home / "tmp"), "RAY_TMPDIR": str(home / "r"),
                    "PYTHONUNBUFFERED": "1"})
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
        if self.ray_start:
            for i in range(1, self.n + 1):
                self.start_ray(i)
            self.wait_nodes(self.n)

    def start_ray(self, i: int) -> None:
        """``ray start`` on host i (the head on host 1, a worker joining it on the others)."""
        res = json.dumps({"bidl_device": self.devices[i - 1]})
        common = ["--node-ip-address", self.ip(i), "--num-cpus", str(self.cpus), "--resources", res,
                  "--temp-dir", str(self.home(i) / "r"), "--disable-usage-stats"]
        args = (["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"] if i == 1
                else ["--address", self.address])
        r = self.run(i, ["ray", "start", *args, *common], timeout=180)
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

    def pids(self, i: int) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", self.ns(i)], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def kill_host(self, i: int) -> list[int]:
        """SIGKILL every process of host i (its raylet, its workers and cells); the PIDs killed."""
        pids = self.pids(i)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

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
    down = sub.add_parser("down", help="remove the namespaces and files of a test bed left behind")
    down.add_argument("id", help="its id (the number in its namespace names, bh<ID>-1)")
    args = ap.parse_args(argv)
    why = unavailable()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if args.cmd == "down":
        bed = TestBed(hosts=1, tag=args.id, ray_start=False)
        shutil.rmtree(bed.root, ignore_errors=True)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        bed.made = [ns for ns in listed if ns == f"bsw{args.id}" or ns.startswith(f"bh{args.id}-")]
        bed.root = Path(next(iter(Path("/tmp").glob(f"bt{args.id}-*")), bed.root))
        bed.close()
        print(f"removed test bed {args.id}")
        return 0
    with TestBed(hosts=args.hosts, devices=args.devices) as bed:
        print(f"test bed {bed.tag}: {bed.n} hosts, Ray at {bed.address} (token auth)")
        for i in range(1, bed.n + 1):
            print(f"  host {i}: {bed.ip(i)}  netns {bed.ns(i)}  HOME {bed.home(i)}")
        print(f"run on host 1: ip netns exec {bed.ns(1)} env HOME={bed.home(1)} RAY_AUTH_MODE=token "
              f"RAY_AUTH_TOKEN_PATH={bed.home(1)}/ray_token bidl-run --address {bed.address} --grid 2x2")
        print("Ctrl-C tears it down", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
