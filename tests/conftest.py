"""Shared test settings and fixtures: deterministic, small, quiet, secure.

- Ray with token authentication (one token per test session, in a private temp dir; subprocesses
  inherit it through RAY_AUTH_TOKEN_PATH), clusters on 127.0.0.1 only; artifacts sealed with a
  per-session key (BIDL_ARTIFACT_KEY_FILE);
- tiny configs: :func:`tiny_glyphs` (the runtime's default model at 2x16x16) and :func:`tiny_dvsmnist`;
- tiny backbones: :data:`TINY` (every backbone type at a few-second compile size), :func:`write_config`,
  :func:`activate` / :func:`active_net` (weights that make every layer spike);
- Ray: ``ray_local`` (one embedded cluster per test module, 8 devices, started with
  ``cluster.start_local``) and ``two_nodes`` (two Ray nodes on this machine, on loopback with token
  auth, each with its own working directory and artifact store).

Helpers are imported by the test modules (``from conftest import ...``); fixtures are injected.
"""
import atexit
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from bidl_runtime.cell.template import CellTemplate, template_workers  # noqa: F401 - tests import it from here
from bidl_runtime.cluster.ray_cluster import secure_env


_EXIT_STATUS: list[int] = []   # pytest's exit status, once the session is over and reported


def _exit_without_teardown() -> None:
    """The last exit handler (registered first): end the process with pytest's status, skipping the
    interpreter's teardown. A suite run once crashed there (SIGSEGV after its summary: native threads of
    torch and Ray torn down in an arbitrary order); a crash in a test still shows (CI runs with
    PYTHONFAULTHANDLER=1). Not in an xdist worker (its controller ends it); ``BIDL_TEST_FULL_TEARDOWN=1``
    keeps the normal exit."""
    if _EXIT_STATUS:
        for f in (sys.stdout, sys.stderr):
            f.flush()
        os._exit(_EXIT_STATUS[-1])


atexit.register(_exit_without_teardown)   # before Ray is imported: its exit handler runs before this one

# A suite started in the background by a non-interactive shell inherits SIGINT ignored, and so would every
# command it starts (a Ctrl-C drill would never stop): commands started from here get Python's default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _fork_cell_template():
    """The in-process grids' cells (``ray_local``, ``two_nodes``) and reference processes fork from a
    template that has torch and the cell code, as ``bidl-run``'s do (bidl_runtime.cell.template): forked
    here, before Ray is imported (``secure_env`` below imports it) or a thread started. None where it
    cannot be (the fixtures then start plain Ray workers); ``BIDL_TEST_NO_TEMPLATE=1`` turns it off."""
    if os.environ.get("BIDL_TEST_NO_TEMPLATE") == "1":
        return None
    return CellTemplate.for_cells()


CELL_TEMPLATE = _fork_cell_template()
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
secure_env()
if "BIDL_ARTIFACT_KEY_FILE" not in os.environ and "BIDL_ARTIFACT_KEY" not in os.environ:
    _keys = tempfile.mkdtemp(prefix="bidl-test-artifact-key-")   # artifacts sealed with a session key,
    atexit.register(shutil.rmtree, _keys, True)                  # not the user's ~/.config/bidl one
    os.environ["BIDL_ARTIFACT_KEY_FILE"] = os.path.join(_keys, "artifact.key")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_sessionfinish(session, exitstatus):
    """Leave the interpreter quiet for its exit: Ray disconnected, and the threads still alive named."""
    import threading
    if not hasattr(session.config, "workerinput") and os.environ.get("BIDL_TEST_FULL_TEARDOWN") != "1":
        _EXIT_STATUS.append(int(exitstatus))
    if "ray" in sys.modules:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    alive = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if alive:
        names = ", ".join(sorted(f"{t.name}{' (daemon)' if t.daemon else ''}" for t in alive))
        print(f"\nthreads alive at the end of the session: {names}", file=sys.stderr)


RAY_FIXTURES = {"ray_local", "two_nodes"}   # fixtures that start a Ray cluster (a module adds its own: STARTS_RAY)


def pytest_collection_modifyitems(config, items):
    """A test whose fixtures start a Ray cluster is ``slow`` (seconds of Ray and cell start-up each):
    ``-m 'not slow'`` stays the quick loop; the full run is unchanged."""
    for item in items:
        starts_ray = RAY_FIXTURES | set(getattr(getattr(item, "module", None), "STARTS_RAY", ()))
        if starts_ray & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ------------------------------------------------------------------------------ tiny configs

def tiny_glyphs(T: int):
    """The default config's model (SeqClif3Fc3DmItout) at 2x16x16, T steps, no data."""
    from bidl_models.config import load_config
    return load_config("clif3fc3dm_itout-b16x1-dvsglyphs", [
        "model.backbone.h0=16", "model.backbone.w0=16", f"model.backbone.timestep={T}",
        "models_compile_inputshape=[[1,2,16,16]]", "data=None"])


SMALL = ["model.backbone.h0=16", "model.backbone.w0=16", "models_compile_inputshape=[[1,2,16,16]]"]


def tiny_dvsmnist(T: int = 10, name: str = "clif3fc3dm_itout-b16x1-dvsmnist"):
    """A shipped config shrunk to 2x16x16 and T steps."""
    from bidl_models.config import load_config
    return load_config(name, SMALL + [f"model.backbone.timestep={T}"])


def glyph_samples(T: int, n: int, seed: int = 0):
    """``n`` seeded (frames [T, 2, 16, 16], label) pairs for :func:`tiny_glyphs`."""
    from bidl_models.datasets.synthetic import synthetic_samples
    return [(x, i % 10) for i, x in enumerate(synthetic_samples(T, (2, 16, 16), n, seed, rate=0.4))]


# ------------------------------------------------------------------------------ tiny backbones

TINY = {
    "SeqClif3Fc3DmItout": (dict(type="SeqClif3Fc3DmItout", timestep=3, c0=2, h0=16, w0=16, nclass=10,
                                cmode="analog"), None),
    "SeqClif5Fc2CdItout": (dict(type="SeqClif5Fc2CdItout", timestep=3, c0=2, h0=64, w0=64, nclass=10), None),
    "SeqClif3Flif2DgItout": (dict(type="SeqClif3Flif2DgItout", timestep=3, c0=2, h0=16, w0=16, nclass=11), None),
    "SeqClif7Fc1CdItout": (dict(type="SeqClif7Fc1CdItout", timestep=3, c0=2, h0=128, w0=128, nclass=10), None),
    "ResNetLifItout": (dict(type="ResNetLifItout", depth=10, nclass=10, timestep=3, input_channels=2,
                            stem_channels=16, base_channels=16, noise=1e-5, soma_params="channel_share",
                            down_t=[1, "avg"]), [[1, 2, 32, 32]]),
}


def write_config(path: Path, backbone: dict, inshape=None, extra: str = "") -> Path:
    """A config file in the user guide's format around ``backbone``."""
    text = f"model = dict(type='ImageClassifier', backbone={backbone!r})\n"
    if inshape is not None:
        text += f"models_compile_inputshape = {inshape!r}\n"
    path.write_text(text + extra)
    return path


def activate(net: nn.Module) -> nn.Module:
    """Raise BN scale/shift and FC gains so that every layer spikes (in place)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(1.5)
                m.bias.fill_(0.25)
            elif isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
                m.bias.add_(0.2)
    return net


def active_net(cfg, path: Path, guide_format: bool = False) -> tuple[nn.Module, Path]:
    """The config's (first) backbone with activated weights, in eval mode, and its checkpoint file
    (a plain state_dict, or the guide's ``{'state_dict': {'backbone.<name>': ...}}``)."""
    from bidl_models.from_config import build_segments
    net = activate(build_segments(cfg)[0].backbone).eval()
    sd = net.state_dict()
    obj = {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}, "meta": {"epoch": 1}} if guide_format else sd
    torch.save(obj, path)
    return net, path


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """One artifact root for the session's streams of the tiny models (:func:`tiny_glyphs` at any T, grid
    and batch): an artifact's directory is named by its model spec's key (model, weights, cut), chunk
    length and batch, and a reused one is checked against its manifest's key, so the modules that stream
    the same tiny model reuse what an earlier one compiled (each still compiles alone, when run alone).
    Tests that count cache misses, damage or inspect artifacts keep a directory of their own."""
    return tmp_path_factory.mktemp("tiny-artifacts")


# ------------------------------------------------------------------------------ Ray

@pytest.fixture(scope="module")
def ray_local():
    """One embedded Ray cluster for the module (token auth, loopback): 2 CPUs, 8 grid devices, no dashboard."""
    import ray

    from bidl_runtime.cluster.ray_cluster import start_local
    with template_workers():
        start_local(num_cpus=2, resources={"bidl_device": 8}, include_dashboard=False, log_to_driver=False,
                    logging_level="WARNING", namespace="tests")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Two Ray nodes on this machine with 2 devices each. Each node runs in its own working
    directory with its own artifact store, and the driver works from a third directory: nothing
    may rely on a shared working directory. Yields ``{'cluster', 'dirs'}``; the driver's working
    directory is ``dirs['driver']`` while the module runs."""
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray.cluster_utils import Cluster

    from bidl_runtime.cluster.ray_cluster import loopback_node
    from bidl_runtime.cluster.ship import STORE_ENV
    root = tmp_path_factory.mktemp("two-nodes")
    dirs = {k: root / k for k in ("head", "second", "driver", "head-store", "second-store")}
    for d in dirs.values():
        d.mkdir()
    here = os.getcwd()
    cluster = None
    try:
        with loopback_node():  # both nodes (and this driver) on 127.0.0.1, token auth from secure_env above
            os.chdir(dirs["head"])     # a node's processes (and its cells) inherit the cwd it starts in
            with template_workers():   # (a forked worker takes the cwd and environment of the raylet's command)
                cluster = Cluster(initialize_head=True, head_node_args={
                    "num_cpus": 1, "resources": {"bidl_device": 2}, "env_vars": {STORE_ENV: str(dirs["head-store"])}})
                os.chdir(dirs["second"])
                cluster.add_node(num_cpus=1, resources={"bidl_device": 2},
                                 env_vars={STORE_ENV: str(dirs["second-store"])})
            os.chdir(dirs["driver"])
            ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING", namespace="test-two-node")
        assert is_token_auth_enabled()
        cluster.wait_for_nodes()
        yield {"cluster": cluster, "dirs": dirs}
    finally:
        os.chdir(here)
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


# ------------------------------------------------------------------------------ plans

def make_plan(cfg, grid=None, replicas: int = 1, device_nodes=None, transport: str = "auto"):
    """A plan without Ray or compile (what ``bidl-plan`` prints): :meth:`GridJob.preview`."""
    from bidl_runtime.api import GridJob
    from bidl_runtime.runtime_config import RuntimeConfig
    return GridJob(cfg, grid=grid, replicas=replicas, runtime=RuntimeConfig(transport=transport)).preview(device_nodes)
