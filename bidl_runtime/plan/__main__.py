"""``bidl-plan`` (``python -m bidl_runtime.plan``): print a grid's cells and edges, with no Ray and no
compile (shapes come from the model spec): which device and node each cell has, which time steps and
blocks it runs, and what every edge carries (transport, bytes per message, tensors).

The model and grid are chosen exactly as ``bidl-run`` chooses them (the same flags and defaults:
:class:`bidl_runtime.api.GridJob`). Also shown: each cell's memory and the total (estimated from
measured figures per kind of cell, :mod:`bidl_runtime.plan.admission`), against what this machine has
available: ``bidl-run`` refuses a grid that does not fit. Config files are Python and run when
loaded (as in BIDL and mmcv): the file loaded is printed first.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from bidl_grid.command import run_command
from bidl_models.config import CONFIG_IS_CODE, describe_source
from bidl_runtime.cluster.memory import available_bytes
from bidl_runtime.plan.admission import lines
from bidl_runtime.run import add_grid_flags, check_sizes
from compile.cache_dir import DEFAULT_HELP as ARTIFACTS_HELP, default_artifacts


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bidl-plan", description=__doc__.split("\n\n")[0],
                                 epilog=f"The model spec is read from its record in the artifact cache "
                                 f"({ARTIFACTS_HELP}) when one is there. Configs are code: {CONFIG_IS_CODE}.")
    add_grid_flags(ap)
    ap.set_defaults(artifacts=default_artifacts())   # bidl-run's cache, for the recorded spec (no flag)
    return ap


def _plan(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    check_sizes(args)
    from bidl_runtime.launch import (  # torch loads only once the flags are read (--help: fast)
        memory_need,
        plan_job,
    )
    job = plan_job(args)
    print(describe_source(job.config))
    plan = job.preview()
    need = memory_need(job, plan, ray_node=True)
    print(plan.table(need.cell_bytes()))
    have = available_bytes()
    print("\n".join(lines(need, {"local": have} if have is not None else None)))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``bidl-plan``'s exit code: 0 printed, 2 a bad flag, config or grid."""
    return run_command(_plan, argv)


if __name__ == "__main__":
    sys.exit(main())
