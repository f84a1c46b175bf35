"""Console scripts: ``bidl-train``, ``bidl-test``, ``bidl-compile``, ``bidl-run``, ``bidl-plan``.

Each checks the torch and Ray versions first (one line and exit code 2 when one is too old, before
either is imported), then calls the tool's ``main`` and turns its outcome into the process's exit code:
the int a ``main`` returns (train: 143 after SIGTERM), 0 for a ``main`` that returns anything else, 2 with
one ``error:`` line for a bad config, value or missing file, 130 on Ctrl-C.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from .versions import UnsupportedVersion, check_all

USAGE_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)


def run_main(module: str, argv: Optional[Sequence[str]] = None) -> int:
    """Exit code of ``<module>.main(argv)`` (see the module doc)."""
    try:
        check_all()
    except UnsupportedVersion as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    main = importlib.import_module(module).main
    try:
        out = main(None if argv is None else list(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return out if isinstance(out, int) and not isinstance(out, bool) else 0


def train() -> int:
    """``bidl-train`` = ``python -m bidl_models.train``."""
    return run_main("bidl_models.train")


def test() -> int:
    """``bidl-test`` = ``python -m bidl_models.evaluate``."""
    return run_main("bidl_models.evaluate")


def compile() -> int:  # noqa: A001 - the tool's name
    """``bidl-compile`` = ``python -m compile``."""
    return run_main("compile.__main__")


def run() -> int:
    """``bidl-run`` = ``python -m bidl_runtime.run``."""
    return run_main("bidl_runtime.run")


def plan() -> int:
    """``bidl-plan`` = ``python -m bidl_runtime.plan``."""
    return run_main("bidl_runtime.plan")
