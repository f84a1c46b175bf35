"""Starting or joining the Ray control plane, secure by default.

``start_local(**ray_init_kwargs)`` starts the embedded single-node cluster:

- Ray's token authentication is on (``RAY_AUTH_MODE=token``, also when the environment said
  ``disabled``). The token is the one the environment names (``RAY_AUTH_TOKEN`` or
  ``RAY_AUTH_TOKEN_PATH``), else a fresh random one this process writes to a private temp dir
  (``$RAY_TMPDIR`` or ``/tmp``: ``bidl-auth-*/token``, dir 0700, file 0600, removed at exit) and
  exports as ``RAY_AUTH_TOKEN_PATH``, so the GCS, raylet, workers, dashboard and agents started here,
  and this process's children, all use it. ``~/.ray/auth_token`` is neither read nor written.
- The node's IP is 127.0.0.1, so every Ray service (GCS, raylet, object manager, workers, dashboard,
  dashboard/runtime-env agents, metrics) listens on loopback only: Ray binds its servers to the node
  IP, and ``ray.init`` turns a loopback ``_node_ip_address`` back into the machine's address, so the
  node IP comes from Ray's own single-machine switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, the
  constant it sets) for the duration of the start only.

``join(address, **kw)`` connects to a real cluster (``--address``): services and binding are that
cluster's; the token is found where Ray keeps it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
``~/.ray/auth_token``), and token mode is switched on when one exists (``RAY_AUTH_MODE`` set
explicitly wins); joining without a token prints a warning. A loopback address (``127.0.0.1:<port>``,
what an embedded cluster's ``--keep-alive`` prints) is dialled as given, from a loopback node.

``start_local`` refuses (RuntimeError) to return a cluster without token auth or off loopback.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

LOOPBACK = "127.0.0.1"
_TOKEN_DIR: Optional[Path] = None   # the token this process made (one per process: Ray caches tokens)


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


def _write_token() -> Path:
    global _TOKEN_DIR
    import secrets
    base = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    _TOKEN_DIR = Path(tempfile.mkdtemp(prefix="bidl-auth-", dir=base))   # mode 0700
    path = _TOKEN_DIR / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    atexit.register(shutil.rmtree, _TOKEN_DIR, True)
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


def start_local(**ray_init_kwargs: Any) -> Any:
    """``ray.init`` of a new embedded cluster with token auth, on loopback only; returns Ray's context."""
    import ray
    secure_env()
    with loopback_node():
        ctx = ray.init(**ray_init_kwargs)
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


def join(address: str, **ray_init_kwargs: Any) -> Any:
    """``ray.init(address=...)`` of an existing cluster, presenting the token Ray finds (if any)."""
    import ray
    if "RAY_AUTH_MODE" not in os.environ:
        from ray._raylet import AuthenticationTokenLoader
        if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
            os.environ["RAY_AUTH_MODE"] = "token"
            _refresh_ray_auth()
    if is_loopback_address(address):
        with loopback_node():   # an embedded cluster listens on 127.0.0.1 only: dial it there, as that node
            ctx = ray.init(address=address, **ray_init_kwargs)
    else:
        ctx = ray.init(address=address, **ray_init_kwargs)
    try:
        _check_auth()
    except RuntimeError:
        print(f"warning: joined the Ray cluster at {address} without token authentication: anyone who can "
              "reach it can run code on it", file=sys.stderr)
    return ctx


def dashboard_agent_port() -> Optional[int]:
    """The connected node's dashboard agent HTTP port (the job agent API), if known."""
    import ray
    here = ray.get_runtime_context().get_node_id()
    for n in ray.nodes():
        if n.get("NodeID") == here:
            port = n.get("DashboardAgentListenPort")
            return int(port) if port and int(port) > 0 else None   # -1: the agent's HTTP server is off
    return None
