"""``python -m compile``: compile a config's segments into artifacts (see ``compile.build``)."""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Optional, Sequence

from .build import INPUT_DTYPES, compile_config
from .errors import ArtifactError, VerificationError


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
        prog="python -m compile",
        description="Compile every model segment of a config, for every time-slice length of the grid, "
                    "into <out>/<net>/model_<i>/t<L>_b<B>[...]/{program.pt2, net_params.json}; reuse "
                    "matching artifacts (content-hash cache), verify new ones against the eager model.")
    p.add_argument("--config", required=True, help="config file or name (e.g. clif3fc3dm_itout-b16x1-dvsmnist)")
    p.add_argument("--checkpoint", help="weights (.pth: state_dict or {'state_dict': ...}); "
                                        "default: deterministic seeded weights")
    p.add_argument("--grid", help="ROWSxCOLS: time-slice rows x segment columns (default: the config's "
                                  "lynxi_devices, else 1 x its segments)")
    p.add_argument("--splits", type=_splits, help="[[s0,e0],[s1,e1],...] block ranges for a single-model "
                                                  "config; a position may cut inside a residual block, e.g. "
                                                  "\"[[0,'7.4:416'],['7.4:416',16]]\" (bidl_models.cuts) "
                                                  "(default with COLS>1: FLOP-balanced automatic split)")
    p.add_argument("--out", default="artifacts", help="output root (default: artifacts/)")
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
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.backbone.timestep=4")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        compile_config(args.config, args.checkpoint, grid=args.grid, splits=args.splits, in_shape=args.in_shape,
                       input_dtype=args.input_dtype, seed=args.seed, overrides=args.cfg_options,
                       out=args.out, force=args.force, aot=args.aot, batch=args.batch, device=args.device,
                       verify=not args.no_verify, fast_load=not args.no_fast_load, use_dataset=not args.no_dataset,
                       verify_chunks=args.verify_chunks, tol=args.tol, progress=not args.quiet)
    except (ArtifactError, VerificationError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
