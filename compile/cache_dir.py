"""The artifact cache directory the commands use when no flag names one: ``$BIDL_ARTIFACTS``, else
``artifacts`` (relative to the working directory).

``bidl-run --artifacts``, ``bidl-compile --out``, ``python -m compile.onnx_export --artifacts-root`` and
``bidl-plan`` (which reads the recorded model spec there) share this default. Imports nothing heavy: the
parsers read it while ``--help`` is built.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

ARTIFACTS_ENV = "BIDL_ARTIFACTS"
DEFAULT_ARTIFACTS = "artifacts"
DEFAULT_HELP = f"default: ${ARTIFACTS_ENV}, else {DEFAULT_ARTIFACTS}"   # for the flags' help texts


def default_artifacts(environ: Optional[Mapping[str, str]] = None) -> str:
    """``$BIDL_ARTIFACTS`` when set and not empty, else ``artifacts`` (``environ``: default ``os.environ``)."""
    env = os.environ if environ is None else environ
    return env.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS
