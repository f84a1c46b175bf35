"""``bidl-compile`` (``python -m compile``): compile a config's segments into artifacts, once.

The chain is :class:`compile.job.CompileJob`'s (the runtime's ``GridJob`` walks the same one), so the
directory written here, ``<out>/<config>-<key>/``, keyed by the model, its cut and its weights'
content, is the one ``bidl-run``, ``bidl-plan`` and the benchmarks look in: a later run of the same
model on the same grid compiles nothing. Exit codes: 0 done, 1 on any error (one ``error:`` line:
a bad config as well as a failed build or verification), 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Optional, Sequence

from bidl_grid.command import run_command
from bidl_models.checkpoint import resolve_checkpoint, shipped_weights
from bidl_models.config import add_config_arguments, describe_source, load_config

from .build import INPUT_DTYPES
from .cache_dir import DEFAULT_HELP as ARTIFACTS_HELP, default_artifacts
from .job import CompileJob
from .options import CompileOptions


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected comma-separated ints, e.g. 2,128,128") from None
    return vals


def _splits(text: str) -> list[list[int]]:
    try:
        val = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"--splits {text!r}: expected a list like [[0,6],[6,16]]") from None
    return val


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bidl-compile",
        description="Compile every model segment of a config, for every time-slice length of the grid, "
                    "into <out>/<config>-<key>/model_<i>/t<L>_b<B>[...]/{program.pt2, net_params.json} (key: the "
                    "model, its cut and its weights' content: bidl-run and bidl-plan find the same directory); "
                    "reuse matching artifacts, verify new ones against the eager model. Config files are Python "
                    "and run when loaded, as in BIDL and mmcv: load only files you trust.")
    add_config_arguments(p)
    p.add_argument("--checkpoint", help="weights (.pth: state_dict or {'state_dict': ...}, BIDL's or this "
                                        "project's); default: the config's shipped weights if any, else "
                                        "deterministic seeded weights")
    p.add_argument("--grid", help="ROWSxCOLS: time-slice rows x segment columns (default: the config's "
                                  "lynxi_devices, else 1 x its segments)")
    p.add_argument("--splits", type=_splits, help="[[s0,e0],[s1,e1],...] block ranges for a single-model "
                                                  "config; a position may cut inside a residual block, e.g. "
                                                  "\"[[0,'7.4:416'],['7.4:416',16]]\" (bidl_models.cuts) "
                                                  "(default with COLS>1: FLOP-balanced automatic split)")
    p.add_argument("--out", default=default_artifacts(), help=f"output root, the artifact cache ({ARTIFACTS_HELP})")
    p.add_argument("--force", action="store_true", help="rebuild even if a matching artifact exists; "
                                                        "replaces stale or corrupt ones")
    p.add_argument("--aot", action="store_true", help="AOTInductor package (fused native kernels) instead of "
                                                      "a torch.export program")
    p.add_argument("--batch", type=int, default=1, help="batch size of the specs (the batch dim is exported "
                                                        "dynamic when possible; default 1)")
    p.add_argument("--input-dtype", choices=INPUT_DTYPES, default=None,
                   help="dtype of the first segment's input (default: the model's, float32 or int64 token ids; "
                        "uint8: event counts, cast inside the program)")
    p.add_argument("--in-shape", type=lambda t: _ints(t, "--in-shape"),
                   help="per-step model input C,H,W when the config does not fix it")
    p.add_argument("--device", default="cpu", help="device to export/compile for (cpu, cuda)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights without --checkpoint and of "
                                                       "the random verification input")
    p.add_argument("--no-verify", action="store_true", help="skip the artifact-vs-eager check")
    p.add_argument("--no-fast-load", action="store_true", help="do not write the TorchScript form that grid "
                                                               "cells load in milliseconds")
    p.add_argument("--no-dataset", action="store_true", help="verify on seeded random spikes, not the "
                                                             "dataset's first test sample")
    p.add_argument("--verify-chunks", type=int, default=3, help="chunks run with state carried (default 3)")
    p.add_argument("--tol", type=float, default=1e-5, help="max abs difference accepted by the verification "
                                                            "(default 1e-5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _compile(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args.config, args.cfg_options, args.config_root)
    print(describe_source(cfg), flush=True)
    checkpoint = resolve_checkpoint(args.checkpoint, cfg) if args.checkpoint else shipped_weights(cfg.name)
    opts = CompileOptions(out=args.out, force=args.force, aot=args.aot, batch=args.batch, device=args.device,
                          verify=not args.no_verify, fast_load=not args.no_fast_load, use_dataset=not args.no_dataset,
                          verify_chunks=args.verify_chunks, tol=args.tol, progress=not args.quiet)
    job = CompileJob(cfg, grid=args.grid, checkpoint=checkpoint, options=opts, splits=args.splits,
                     in_shape=args.in_shape, input_dtype=args.input_dtype, seed=args.seed)
    job.artifacts()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``bidl-compile``'s exit code (every error counts as a failure: 1)."""
    return run_command(_compile, argv, usage_errors=())


if __name__ == "__main__":
    sys.exit(main())
