"""Console scripts: ``bidl-train``, ``bidl-test``, ``bidl-compile``, ``bidl-run``, ``bidl-plan``.

Each runs its tool's ``main`` in :func:`bidl_grid.command.run_command` (exit codes and one-line
errors); the tool's module is imported only after the torch and Ray versions are checked, so a
too-old one is named before either is imported.
"""
from __future__ import annotations

import sys
from importlib import import_module
from typing import Optional, Sequence

from .command import run_command
from .versions import UnsupportedVersion, check_all


def run_main(module: str, argv: Optional[Sequence[str]] = None) -> int:
    """Exit code of ``<module>.main(argv)`` (see :mod:`bidl_grid.command`)."""
    try:
        check_all()
    except UnsupportedVersion as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_command(import_module(module).main, argv)


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
    return run_main("bidl_runtime.plan.__main__")
