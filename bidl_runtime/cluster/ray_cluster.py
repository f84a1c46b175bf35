"""Starting or joining the Ray control plane, secure by default.

``start_local(**ray_init_kwargs)`` starts the embedded single-node cluster:

- It is always a new, private cluster: ``ray.init(address="local")`` with this process's own Ray temp
  dir (:func:`private_dir`), so neither ``RAY_ADDRESS`` (dropped from this process's environment, with a
  note) nor a ``ray_current_cluster`` file nor another cluster running on the machine (``ray start``,
  someone else's) is found or joined; their ports and files are left alone.
- The private dir (``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp``: ``bidl-ray-XXXXXXXX``, mode 0700;
  ``/tmp`` when that base is too long for Ray's socket paths) holds Ray's sessions and the token this
  process made; it is removed at exit (after shutting down the embedded cluster, if still up), and
  the next start on the machine removes those of processes that died without cleaning up (a killed
  driver), recognised by the pid and start time recorded in them.
- Ray's token authentication is on (``RAY_AUTH_MODE=token``, also when the environment said
  ``disabled``). The token is the one the environment names (``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH``), else a fresh random one this process writes to its private dir (``token``,
  mode 0600) and exports as ``RAY_AUTH_TOKEN_PATH``, so the GCS, raylet, workers, dashboard and agents
  started here, and this process's children, all use it. ``~/.ray/auth_token`` is neither read nor written.
- The node's IP is 127.0.0.1, so every Ray service (GCS, raylet, object manager, workers, dashboard,
  dashboard/runtime-env agents, metrics) listens on loopback only: Ray binds its servers to the node
  IP, and ``ray.init`` turns a loopback ``_node_ip_address`` back into the machine's address, so the
  node IP comes from Ray's own single-machine switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, the
  constant it sets) for the duration of the start only.

- Without the dashboard the node is lean (:func:`lean_node`): the GCS, the raylet and its agents only;
  no autoscaler monitor, log monitor, API server or idle prestarted workers (``ray.init`` in
  2.5-2.7 s instead of 5.3-7.7 s on a 2-core VM). ``include_dashboard=True`` starts them all.

``join(address, **kw)`` connects to a real cluster (``--address``): services and binding are that
cluster's; the token is found where Ray keeps it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
``~/.ray/auth_token``), and token mode is switched on when one exists (``RAY_AUTH_MODE`` set
explicitly wins); joining without a token prints a warning. ``address="auto"`` is the cluster
``RAY_ADDRESS`` names, else the one ``ray start`` recorded on this machine (``ray_current_cluster``);
never an unrecorded cluster found by process name. Before Ray is asked, the address is checked (a
TCP connection, then a gRPC hello answered within ``GCS_PROBE_TIMEOUT_S``): a dead or unreachable
cluster is a :class:`ClusterError`, one line naming the address and what was tried, instead of Ray's
minutes of retries. A loopback address (``127.0.0.1:<port>``, what an embedded cluster's ``--keep-alive`` prints)
is dialled as given, from a loopback node.

``start_local`` refuses (RuntimeError) to return a cluster without token auth or off loopback.
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

from bidl_runtime.channels.tls import tls_files

LOOPBACK = "127.0.0.1"
PRIVATE_PREFIX = "bidl-ray-"            #: private dirs: <base>/bidl-ray-XXXXXXXX (mkdtemp's 8 characters)
OWNER_FILE = "owner"                    #: in a private dir: "<pid> <process start time>" of its process
SOCKET_PATH_MAX = 107                   #: bytes in an AF_UNIX path (Linux)
SESSION_TAIL = 66                       #: "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store", at most
GCS_PROBE_TIMEOUT_S = 5.0               #: --address: the GCS port must answer a gRPC hello within this
                                        #: (Ray itself retries a dead address for many minutes)
CONNECT_TIMEOUT_S = 5.0                 #: --address: the TCP connection to the GCS port
_PRIVATE: Optional[Path] = None         # this process's private dir (made on first use)
_PRIVATE_PID = 0                        # the process that made it (a forked child makes its own)


class ClusterError(RuntimeError):
    """Ray could not be started or joined; the message is one line naming the address (or the directory)
    and what was tried."""


def token_source() -> str:
    """Where Ray processes started from here take the token from (for messages)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    return str(Path.home() / ".ray" / "auth_token")


def token_env() -> str:
    """What another process puts in its environment to present this process's token (for the line a
    kept-alive grid prints): ``RAY_AUTH_TOKEN_PATH=<file>``, ``RAY_AUTH_TOKEN=$RAY_AUTH_TOKEN`` (the value
    is not printed), or ``''`` when Ray finds it by itself (``~/.ray/auth_token``)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN=$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    return ""


def _host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``[scheme://]host:port``; ValueError naming the address otherwise."""
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--address {address!r}: expected HOST:PORT (or auto)")
    return host, int(port)


def is_loopback_address(address: str) -> bool:
    """Whether a ``host:port`` cluster address names this machine's loopback (an embedded cluster)."""
    import ipaddress
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refresh_ray_auth() -> None:
    """Make this process's Ray see the current auth environment (Ray caches the mode and the token;
    this is what ``ray.init`` itself does when it turns token auth on)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):
        pass


# ------------------------------------------------------------------------- the private dir

def temp_base() -> Path:
    """Where private dirs are made: ``$RAY_TMPDIR``, else ``$TMPDIR``, else ``/tmp`` (Ray's order), or
    ``/tmp`` when that path leaves no room for Ray's socket paths below it."""
    for name in ("RAY_TMPDIR", "TMPDIR"):
        base = os.environ.get(name)
        if not base:
            continue
        if os.path.isabs(base) and _fits(base):
            return Path(base)
        print(f"note: ${name}={base} is not used for the embedded Ray cluster: Ray's socket paths under it "
              f"would exceed {SOCKET_PATH_MAX} bytes (or it is not absolute); using /tmp", file=sys.stderr)
        break
    return Path("/tmp")


def _fits(base: str) -> bool:
    return len(os.fsencode(base)) + 1 + len(PRIVATE_PREFIX) + 8 + SESSION_TAIL <= SOCKET_PATH_MAX


def _start_time(pid: int) -> Optional[int]:
    """When process ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat``); None: no such process."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return int(stat_line.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_alive(d: Path) -> bool:
    """Whether the process that made private dir ``d`` still runs (its pid, with the same start time)."""
    try:
        pid, started = (int(v) for v in (d / OWNER_FILE).read_text().split())
    except (OSError, ValueError):
        try:   # no owner file yet: being made right now, or made by a process killed at that moment
            return time.time() - d.stat().st_mtime < 60
        except OSError:
            return False
    now = _start_time(pid)
    return now is not None and (started == 0 or now == started)   # a reused pid started later


def sweep_private(base: Optional[Path] = None) -> list[str]:
    """Remove this user's private dirs whose process is gone (a killed run's token and Ray sessions);
    returns their paths. Dirs of live processes and of other users are left alone."""
    base = Path(base) if base is not None else temp_base()
    removed = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for e in entries:
        if not re.fullmatch(re.escape(PRIVATE_PREFIX) + r"[A-Za-z0-9_]{8}", e.name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or _owner_alive(Path(e.path)):
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        removed.append(e.path)
    return removed


def private_dir() -> Path:
    """This process's private temp dir (made on first use, mode 0700; removed at exit): Ray's temp dir
    for the embedded cluster and the place of the token this process makes."""
    global _PRIVATE, _PRIVATE_PID
    if _PRIVATE is not None and _PRIVATE_PID == os.getpid() and _PRIVATE.is_dir():
        return _PRIVATE
    base = temp_base()
    base.mkdir(parents=True, exist_ok=True)
    sweep_private(base)
    d = Path(tempfile.mkdtemp(prefix=PRIVATE_PREFIX, dir=base))
    (d / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid()) or 0}\n")
    _PRIVATE, _PRIVATE_PID = d, os.getpid()
    atexit.register(_remove_private, d, os.getpid())
    return d


def _remove_private(d: Path, pid: int) -> None:
    """At exit: shut the embedded cluster down if it is still up (its processes use ``d``), remove ``d``."""
    if os.getpid() != pid:
        return
    ray = sys.modules.get("ray")
    try:
        if ray is not None and ray.is_initialized() and _in_dir(d):
            ray.shutdown()
    except Exception:  # noqa: BLE001 - exiting anyway: the directory still goes
        pass
    shutil.rmtree(d, ignore_errors=True)


def _in_dir(d: Path) -> bool:
    """Whether the connected Ray node keeps its session under ``d`` (the embedded cluster)."""
    here = session_dir()
    return here is not None and here.is_relative_to(d)


def session_dir() -> Optional[Path]:
    """The Ray session directory of the cluster this process is connected to, on this machine
    (``<private dir>/session_...`` for the embedded one); None when not connected."""
    try:
        from ray._private import worker
        return Path(worker._global_node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - not connected, or Ray's internals moved
        return None


def latest_session() -> Path:
    """The newest live embedded cluster's ``session_latest`` of this user on this machine (a kept-alive
    run's), else Ray's default ``$RAY_TMPDIR/ray/session_latest`` (a cluster started with ``ray start``)."""
    found = []
    for d in temp_base().glob(PRIVATE_PREFIX + "*"):
        link = d / "session_latest"
        try:
            if link.exists() and d.stat().st_uid == os.getuid() and _owner_alive(d):
                found.append((link.stat().st_mtime, link))
        except OSError:
            continue
    if found:
        return max(found)[1]
    from ray._common.utils import get_default_ray_temp_dir
    return Path(get_default_ray_temp_dir()) / "session_latest"


def _write_token() -> Path:
    import secrets
    path = private_dir() / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def secure_env() -> str:
    """Token auth on for the Ray processes started from this process; returns where the token is.

    Keeps a token the environment already names; else makes one for this process (see the module doc).
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token":
        print(f"note: RAY_AUTH_MODE={os.environ['RAY_AUTH_MODE']} ignored: the embedded Ray cluster always "
              "uses token authentication", file=sys.stderr)
    os.environ["RAY_AUTH_MODE"] = "token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(_write_token())
    _refresh_ray_auth()
    return token_source()


@contextmanager
def loopback_node() -> Iterator[None]:
    """Nodes started (and drivers connected) inside this block get the node IP 127.0.0.1."""
    from ray._private import ray_constants
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False   # Ray's single-machine mode: node IP = loopback
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _check_auth() -> None:
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    if not is_token_auth_enabled():
        raise RuntimeError("Ray came up without token authentication; refusing to run on it")


@contextmanager
def lean_node() -> Iterator[dict]:
    """A head node started inside this block runs only what a grid uses: the GCS, the raylet and its
    agents (metrics, runtime envs). Left out: the autoscaler's monitor (a local node never scales),
    the log monitor (it streams worker logs to a driver that asked for none), Ray's API server (the
    dashboard, job and state APIs) and the idle workers a raylet starts ahead of any task (cells
    start their own, forked from the cell template). Measured on a 2-core VM: ``ray.init`` 2.5-2.7 s
    and 1.8-2.1 CPU s in Ray's processes, against 5.3-7.7 s and 4.9-6.9 CPU s for the full set.
    Yields the ``_system_config`` entries to pass. Where this Ray has no such hooks (another
    version), the node starts in full."""
    try:
        from ray._private import node as ray_node
        from ray._private import parameter
        real_init, real_api = parameter.RayParams.__init__, ray_node.Node.start_api_server
    except (ImportError, AttributeError):
        yield {}
        return

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("no_monitor", True)
        kwargs.setdefault("include_log_monitor", False)
        real_init(self, *args, **kwargs)

    parameter.RayParams.__init__ = init
    ray_node.Node.start_api_server = lambda self, **kwargs: None
    try:
        yield {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
    finally:
        parameter.RayParams.__init__, ray_node.Node.start_api_server = real_init, real_api


def start_local(lean: Optional[bool] = None, **ray_init_kwargs: Any) -> Any:
    """``ray.init`` of a new, private embedded cluster (its own Ray temp dir, see the module doc) with
    token auth, on loopback only; returns Ray's context. ``RAY_AUTH_*`` aside, nothing Ray left on the
    machine (``RAY_ADDRESS``, ``ray_current_cluster``, a running cluster) makes it join another one.
    ``lean`` (default: without ``include_dashboard``): only the services a grid uses (:func:`lean_node`)."""
    import ray
    if "address" in ray_init_kwargs:
        raise ValueError("start_local(address=...): start_local always starts a new cluster; "
                         "join(address) connects to an existing one")
    secure_env()
    ignored = os.environ.pop("RAY_ADDRESS", None)
    if ignored:
        print(f"note: RAY_ADDRESS={ignored} ignored: without --address the run starts its own private Ray "
              "cluster (--address auto joins the cluster RAY_ADDRESS names)", file=sys.stderr)
    temp = ray_init_kwargs.pop("_temp_dir", None) or str(_fresh_temp_dir())
    try:
        lean = not ray_init_kwargs.get("include_dashboard") if lean is None else lean
        with loopback_node(), lean_node() if lean else nullcontext({}) as system:
            if system:
                ray_init_kwargs["_system_config"] = {**system, **(ray_init_kwargs.get("_system_config") or {})}
            ctx = ray.init(address="local", _temp_dir=temp, **ray_init_kwargs)
    except Exception as e:
        raise ClusterError(f"starting the embedded Ray cluster (temp dir {temp}) failed: "
                           f"{_last_line(e)}") from e
    try:
        _check_auth()
        ip = ray.util.get_node_ip_address()
        if ip != LOOPBACK:
            raise RuntimeError(f"the embedded Ray node came up on {ip}, not {LOOPBACK}: its services would be "
                               "reachable from the network; refusing to run on it")
    except BaseException:
        ray.shutdown()
        raise
    return ctx


def _fresh_temp_dir() -> Path:
    """This process's private dir, emptied of the sessions of clusters it started and stopped before
    (none runs now: ``ray.init`` refuses a second cluster)."""
    d = private_dir()
    for entry in d.iterdir():
        if entry.name.startswith("session_"):
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink(missing_ok=True)
            else:
                shutil.rmtree(entry, ignore_errors=True)
    return d


def _last_line(e: BaseException) -> str:
    """An exception as one short line (Ray's messages run over several)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _join_failure(e: BaseException) -> str:
    """Why ``ray.init(address=...)`` failed, in one line: Ray wraps the reason (a refused token, ...) in
    a generic "Failed to connect"; the innermost message says it."""
    chain = []
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    texts = [" ".join(str(c).split()) for c in chain]
    if any(re.search(r"auth|token", t, re.I) for t in texts):
        have = (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())
        return (f"it refused this process's token ({token_source() if have else 'none found'}): give the "
                "cluster's token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    inner = next((t for t in reversed(texts) if t), type(chain[0]).__name__)
    return inner if len(inner) <= 300 else inner[:297] + "..."


def resolve_address(address: str) -> str:
    """The cluster address ``--address`` means: ``auto`` is ``RAY_ADDRESS``, else the address ``ray start``
    recorded on this machine; anything else is used as given. ClusterError when ``auto`` finds nothing."""
    address = address.strip()
    if address == "local":
        raise ValueError("--address local: not a cluster to join (leave --address out to start the embedded "
                         "cluster)")
    if address != "auto":
        return address
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env and env not in ("auto", "local"):
        return env
    from ray._common.utils import get_ray_address_file
    from ray._private.utils import read_ray_address
    recorded = read_ray_address()
    if recorded:
        return recorded
    raise ClusterError(f"--address auto: RAY_ADDRESS is not set and no cluster started with `ray start` is "
                       f"recorded in {get_ray_address_file(None)}; give the cluster's HOST:PORT")


def _flag(address: str, given: str) -> str:
    """How an error names the flag: ``--address X``, or ``--address auto`` with what it found and where."""
    if given.strip() != "auto":
        return f"--address {address}"
    if os.environ.get("RAY_ADDRESS", "").strip() == address:
        return f"--address auto (RAY_ADDRESS={address})"
    from ray._common.utils import get_ray_address_file
    return f"--address auto ({address}, recorded by `ray start` in {get_ray_address_file(None)})"


_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])   # preface + empty SETTINGS


def probe(address: str, timeout_s: float = GCS_PROBE_TIMEOUT_S) -> None:
    """Check that a Ray GCS can be there: a TCP connection within ``CONNECT_TIMEOUT_S``, and an answer to
    a gRPC (HTTP/2) hello within ``timeout_s`` (the GCS is a gRPC server; skipped for ``ray://`` and
    TLS clusters). ClusterError saying what was tried and what failed."""
    host, port = _host_port(address)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    except socket.gaierror as e:
        raise ClusterError(f"host {host!r} not found ({e.strerror})") from None
    except ConnectionRefusedError:
        raise ClusterError(f"nothing listens on {host}:{port} (TCP connection refused): is the cluster "
                           "running?") from None
    except (TimeoutError, socket.timeout):
        raise ClusterError(f"no answer from {host}:{port} within {CONNECT_TIMEOUT_S:g} s (host down, or a "
                           "firewall)") from None
    except OSError as e:
        raise ClusterError(f"cannot reach {host}:{port} ({e.strerror or e})") from None
    with sock:
        if "://" in address or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        head = b""
        try:
            sock.settimeout(timeout_s)
            sock.sendall(_H2_HELLO)
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except (TimeoutError, socket.timeout):
            raise ClusterError(f"{host}:{port} accepts TCP connections but answered nothing to a gRPC hello "
                               f"within {timeout_s:g} s: not a Ray GCS port (or the cluster is stuck)") from None
        except OSError as e:
            raise ClusterError(f"{host}:{port} dropped a gRPC hello ({e.strerror or e}): not a Ray GCS "
                               "port") from None
    if len(head) < 9 or head[3] != 4:   # a gRPC server's first frame is its SETTINGS (type 4)
        raise ClusterError(f"{host}:{port} accepts TCP connections but does not answer as a gRPC server: not "
                           "a Ray GCS port")


def join(address: str, **ray_init_kwargs: Any) -> Any:
    """``ray.init(address=...)`` of an existing cluster, presenting the token Ray finds (if any).

    ``address``: ``HOST:PORT`` (a GCS), ``ray://HOST:PORT`` or ``auto`` (see :func:`resolve_address`).
    ClusterError (one line: the address and what was tried) when no cluster answers there.
    """
    import ray
    given = address
    address = resolve_address(address)
    flag = _flag(address, given)
    if "RAY_AUTH_MODE" not in os.environ:
        from ray._raylet import AuthenticationTokenLoader
        if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
            os.environ["RAY_AUTH_MODE"] = "token"
            _refresh_ray_auth()
    try:
        probe(address)
    except ClusterError as e:
        raise ClusterError(f"{flag}: cannot join a Ray cluster there: {e}") from None
    try:
        if is_loopback_address(address):
            with loopback_node():   # an embedded cluster listens on 127.0.0.1 only: dial it there, as that node
                ctx = ray.init(address=address, **ray_init_kwargs)
        else:
            ctx = ray.init(address=address, **ray_init_kwargs)
    except Exception as e:
        raise ClusterError(f"{flag}: its Ray GCS answered, then joining failed: {_join_failure(e)}") from e
    try:
        _check_auth()
    except RuntimeError:
        print(f"warning: joined the Ray cluster at {address} without token authentication: anyone who can "
              "reach it can run code on it", file=sys.stderr)
    return ctx


def use_tls(address: Optional[str]) -> str:
    """``--tls``: Ray's TLS for this process, which joins a cluster whose nodes run with it
    (``RAY_USE_TLS=1``, the certificate, key and CA files the environment names: the same files the tcp
    channels' TLS uses, see :mod:`bidl_runtime.channels.tls`). ValueError (one line) without
    ``address`` (the embedded cluster is on 127.0.0.1 only: nothing crosses hosts) or without the
    files. Returns what it turned on (for messages)."""
    if not address:
        raise ValueError("--tls encrypts what crosses hosts: it needs --address (the embedded cluster runs on "
                         "127.0.0.1 only)")
    cert, _, ca = tls_files()
    os.environ["RAY_USE_TLS"] = "1"
    return f"Ray TLS and channel TLS with {cert} (CA {ca})"


def dashboard_agent_port() -> Optional[int]:
    """The connected node's dashboard agent HTTP port (the job agent API), if known."""
    import ray
    here = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == here:
            port = n.get("DashboardAgentListenPort")
            return int(port) if port and int(port) > 0 else None   # -1: the agent's HTTP server is off
    return None
