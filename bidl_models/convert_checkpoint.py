"""Convert checkpoints between BIDL's format and this project's.

    python -m bidl_models.convert_checkpoint IN.pth OUT.pth [--to project|bidl] [--config CFG]

``--to`` defaults to the other format than IN's. To the project's: ``dict(state_dict (backbone.*),
optimizer, scheduler, epoch, config, meta)``; to BIDL's: ``tools/train.py``'s ``dict(state_dict,
optimizer_state_dict, scheduler_stat_dict, epoch, time, iters, seed, config)`` (bare backbone keys),
so a model trained here goes back to BIDL's toolchain. Weights are never renamed (the backbones
use BIDL's module names); BIDL -> project -> BIDL returns BIDL's file. With ``--config`` the weights
are first loaded strictly into that config's model (a missing, extra or mis-shaped tensor fails,
naming it), and a model whose layout has no BIDL counterpart (e.g. ``norm_state=False``) cannot go
to BIDL's format.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from bidl_grid.command import run_command

from .backbones import build_backbone
from .checkpoint import checkpoint_format, extract_state_dict, load_weights, read_checkpoint, strip_prefixes, to_bidl, \
    to_project
from .config import add_config_arguments, backbone_config, describe_source, load_config


def non_bidl_layout(backbone: Mapping[str, Any]) -> list[str]:
    """``key=value`` settings of a backbone config that BIDL's own classes do not have (empty: a
    BIDL install builds the same model)."""
    bb, out = dict(backbone), []
    bidl_norm_state = str(bb.get("type", "")).startswith("Seq")  # Seq*: BN on the state; ResNet: none
    if "norm_state" in bb and bool(bb["norm_state"]) != bidl_norm_state:
        out.append(f"norm_state={bb['norm_state']!r}")
    if bb.get("norm") == "bn":
        out.append("norm='bn'")
    if bb.get("conv_bias", True) is not True:
        out.append(f"conv_bias={bb['conv_bias']!r}")
    if float(bb.get("surrogate_width", 1.0)) != 1.0:
        out.append(f"surrogate_width={bb['surrogate_width']!r}")
    if str(bb.get("neuron", "lif")).lower() == "lifplus" and bb.get("lifplus_form", "bidl") != "bidl":
        out.append(f"lifplus_form={bb['lifplus_form']!r}")
    if bb.get("amode", "mean") != "mean":
        out.append(f"amode={bb['amode']!r}")
    return out


def convert_checkpoint_file(src: str | Path, dst: str | Path, to: Optional[str] = None,
                            config: Any = None) -> dict[str, Any]:
    """Convert ``src`` to ``dst``; returns a summary (formats, tensors, parameters)."""
    obj = read_checkpoint(src)
    fmt = checkpoint_format(obj)
    target = to or ("project" if fmt in ("bidl", "state_dict") else "bidl")
    if target not in ("project", "bidl"):
        raise ValueError(f"--to {target!r}: expected 'project' or 'bidl'")
    sd = strip_prefixes(extract_state_dict(obj, str(src)))
    cfg_dict, name = None, None
    if config is not None:
        bb = backbone_config(config)
        load_weights(build_backbone(bb), sd, f"checkpoint {str(src)!r}")
        if target == "bidl":
            bad = non_bidl_layout(bb)
            if bad:
                raise ValueError(f"{getattr(config, 'name', 'config')}: model.backbone {', '.join(bad)} has no "
                                 "counterpart in BIDL's backbones; its weights would not mean the same there")
        cfg_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        name = getattr(config, "name", None) or None
    out = to_project(obj, cfg_dict, str(src)) if target == "project" else to_bidl(obj, name, str(src))
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    return dict(source=str(src), source_format=fmt, target=str(dst), target_format=target, tensors=len(sd),
                values=n_params)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bidl_models.convert_checkpoint", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="checkpoint to convert (BIDL's or this project's, or a bare state_dict)")
    p.add_argument("dst", help="where to write the converted checkpoint")
    p.add_argument("--to", choices=("project", "bidl"), help="target format (default: the other one)")
    add_config_arguments(p, required=False)    # --config: check the weights against its model and record it
    return p.parse_args(argv)


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Parse ``argv``, convert, print one line; the summary of :func:`convert_checkpoint_file`."""
    args = parse_args(argv)
    cfg = None
    if args.config:
        cfg = load_config(args.config, args.cfg_options, args.config_root)
        print(describe_source(cfg))
    res = convert_checkpoint_file(args.src, args.dst, args.to, cfg)
    print(f"{res['source']} ({res['source_format']}) -> {res['target']} ({res['target_format']}): "
          f"{res['tensors']} tensors, {res['values']:,} values" + (f", checked against {cfg.name}" if cfg else ""))
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: 0 once the file is written (errors raise, see :func:`bidl_grid.command.run_command`)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
