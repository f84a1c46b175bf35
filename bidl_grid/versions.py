"""The oldest torch and Ray releases bidl-grid runs on, and the checks that enforce them.

``pyproject.toml`` states the same floors for pip; these checks cover installs pip did not resolve
(``--no-deps``, conda, a source build on ``PYTHONPATH``): ``bidl_models`` checks torch when it is
imported, ``bidl_runtime`` checks Ray, and every console script checks both before it imports either,
so an old release fails with one line naming what is needed instead of an AttributeError deep inside.

Why these floors (measured: see the README's install section):

- torch 2.10: the compile stage traces each exported program (``torch.export``, ``Dim.AUTO``) into the
  TorchScript form the cells load (compile/build.py ``_add_fast``); on torch 2.7.0, 2.8.0 and 2.9.1 that
  trace recurses without end (RecursionError in FakeTensor dispatch), so no artifact builds. 2.10.0 builds
  and verifies them bit-exact.
- Ray 2.53: token authentication (``RAY_AUTH_MODE=token``), always on in the embedded cluster, with
  ``AuthenticationTokenLoader.has_token(ignore_auth_mode=...)`` (bidl_runtime/cluster.py), which Ray
  2.52 lacks (TypeError: unauthenticated-client checks fail there).
"""
from __future__ import annotations

import re
import sys
from importlib import metadata
from typing import Optional

MIN_TORCH = (2, 10)
MIN_RAY = (2, 53)

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
            "exported programs traced into TorchScript, which recurses on older torch")


def check_ray(version: Optional[str] = None) -> None:
    """ray >= MIN_RAY (default: the installed or imported Ray)."""
    require("ray", version if version is not None else installed("ray"), MIN_RAY,
            "token authentication, RAY_AUTH_MODE=token, AuthenticationTokenLoader.has_token(ignore_auth_mode)")


def check_all() -> None:
    """Both checks (what every console script runs first)."""
    check_torch()
    check_ray()
