"""``bidl-plan`` (``python -m bidl_runtime.plan``): print a grid's cells and edges, with no Ray and no
compile (shapes come from the model spec): which device and node each cell has, which time steps and
blocks it runs, and what every edge carries (transport, bytes per message, tensors).

The model and grid are chosen exactly as ``bidl-run`` chooses them (the same flags and defaults:
:class:`bidl_runtime.api.GridJob`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from bidl_grid.command import run_command
from bidl_models.config import describe_source

from bidl_runtime.run import add_grid_flags


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bidl-plan", description=__doc__.split("\n\n")[0])
    add_grid_flags(ap)
    return ap


def _plan(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    from bidl_runtime.launch import plan_job   # torch loads only once the flags are read (--help: fast)
    job = plan_job(args)
    print(describe_source(job.config))
    print(job.preview().table())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``bidl-plan``'s exit code: 0 printed, 2 a bad flag, config or grid."""
    return run_command(_plan, argv)


if __name__ == "__main__":
    sys.exit(main())
