"""The oldest torch and Ray releases bidl-grid runs on, and the checks that enforce them.

``pyproject.toml`` states the same floors for pip; these checks cover installs pip did not resolve
(``--no-deps``, conda, a source build on ``PYTHONPATH``): ``bidl_models`` checks torch when it is
imported, ``bidl_runtime`` checks Ray, and every console script checks both before it imports either,
so an old release fails with one line naming what is needed instead of an AttributeError deep inside.

Why these floors (see the README's install section):

- torch 2.7: ``torch.export.Dim.AUTO`` (compile/build.py, compile/onnx_export.py) and the AOTInductor
  packaging API ``torch._inductor.aoti_compile_and_package`` / ``aoti_load_package`` (``--aot``) first
  shipped in 2.6, and ``torch.export.export`` traces non-strictly by default only from 2.7 (the
  artifacts are exported with the default, the mode the suite checks bit for bit).
- Ray 2.52: the first release with token authentication (``RAY_AUTH_MODE=token``,
  ``ray._private.authentication.authentication_utils``, ``ray._raylet.AuthenticationTokenLoader``),
  which the embedded cluster always turns on (bidl_runtime/cluster.py).
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from typing import Optional

MIN_TORCH = (2, 7)
MIN_RAY = (2, 52)

__all__ = ["MIN_TORCH", "MIN_RAY", "UnsupportedVersion", "parse", "installed", "require", "check_torch",
           "check_ray", "check_all"]


class UnsupportedVersion(ImportError):
    """An installed dependency older than bidl-grid supports (message: one line naming the fix)."""


def parse(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``'2.13.0+cpu'`` -> ``(2, 13, 0)``,
    ``'2.7.0a0+git1a2b'`` -> ``(2, 7, 0)``. ValueError when it does not start with a number."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    if not m:
        raise ValueError(f"version {version!r}: expected a release number such as '2.7.0'")
    return tuple(int(p) for p in m.group(1).split("."))


def installed(module: str, dist: Optional[str] = None) -> Optional[str]:
    """The version of ``module``: its ``__version__`` when already imported (what really runs), else the
    installed distribution's metadata (without importing it); None when neither exists."""
    mod = sys.modules.get(module)
    if mod is not None and isinstance(getattr(mod, "__version__", None), str):
        return mod.__version__
    try:
        return metadata.version(dist or module)
    except metadata.PackageNotFoundError:
        return None


def _hint(name: str, need: str) -> str:
    if name == "torch":
        return (f"pip install 'torch>={need}' (CPU-only: add --index-url https://download.pytorch.org/whl/cpu; "
                "CUDA: see the README's install section)")
    return f"pip install '{name}[default]>={need}'"


def require(name: str, version: Optional[str], minimum: tuple[int, ...], why: str) -> None:
    """UnsupportedVersion (one line) when ``version`` is older than ``minimum``; None or an unparsable
    version passes (an absent package fails at its own import, an odd local build is given the benefit)."""
    if version is None:
        return
    try:
        have = parse(version)
    except ValueError:
        return
    if have < minimum:
        need = ".".join(map(str, minimum))
        raise UnsupportedVersion(f"bidl-grid needs {name}>={need} ({why}); this environment has {name} "
                                 f"{version}: {_hint(name, need)}")


def check_torch(version: Optional[str] = None) -> None:
    """torch >= MIN_TORCH (default: the installed or imported torch)."""
    require("torch", version if version is not None else installed("torch"), MIN_TORCH,
            "torch.export Dim.AUTO, non-strict export by default, AOTInductor packages")


def check_ray(version: Optional[str] = None) -> None:
    """ray >= MIN_RAY (default: the installed or imported Ray)."""
    require("ray", version if version is not None else installed("ray"), MIN_RAY,
            "token authentication, RAY_AUTH_MODE=token")


def check_all() -> None:
    """Both checks (what every console script runs first)."""
    check_torch()
    check_ray()
