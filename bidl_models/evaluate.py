"""Evaluate a checkpoint: ``python -m bidl_models.evaluate --config NAME_OR_PATH --checkpoint CKPT [options]``
(the ``bidl-test`` command; BIDL's ``tools/test.py`` on CPU or GPU).

Prints ``accuracy_top-1`` / ``accuracy_top-5`` (percent) and ``loss`` on the config's ``data.test``
(``--split val`` for ``data.val``) -- the metric names of the training logs' val lines, also the keys of
``--out``'s JSON -- and the speed in time-step frames per second: ``samples * T / seconds spent in the
model`` (data loading not counted; end-to-end samples/s is reported too). Any batch size (``--batch-size``), CPU or CUDA
(``--device``); ``--limit N`` evaluates the first N samples only; ``--out FILE.json`` saves the result;
``--export-to FILE.pth`` writes the weights, config and this result as a small deployable file.
The checkpoint may be a training checkpoint of this project or of BIDL's ``tools/train.py``, or a bare
backbone state_dict (loaded strictly: every tensor must match).

The config is found as BIDL's tools find it (``--config-root`` too, see :mod:`bidl_models.config`) and a
bare ``--checkpoint`` name (``latest.pth``) where BIDL's ``tools/test.py`` and this project's training put
it (:func:`bidl_models.checkpoint.resolve_checkpoint`); both files are printed. ``--synthetic [N]``
evaluates N seeded random samples of the model's input (default 64) instead of the config's data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from bidl_grid.command import run_command

from .checkpoint import load_checkpoint, load_weights, read_state_dict, resolve_checkpoint, save_checkpoint
from .classifier import build_classifier, class_scores
from .config import Config, add_config_arguments, describe_source, load_config
from .inference import evaluate_logits, make_loader, predict, resolve_device
from .model_input import build_split, check_input_shape

SYNTHETIC_DEFAULT = 64


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, device: str = "auto", batch_size: Optional[int] = None,
                        limit: Optional[int] = None, split: str = "test", workers: int = 0, amp: bool | str = False,
                        progress: bool = True, return_logits: bool = False,
                        synthetic: Optional[int] = None) -> dict[str, Any]:
    """Accuracy and frames/s of ``checkpoint`` on ``cfg.data[split]`` (the first ``limit`` samples; with
    ``synthetic``, that many seeded random samples of the model's input instead); with
    ``return_logits`` the result also holds ``logits`` ``[N, nclass]`` and ``labels``."""
    dev = resolve_device(device)
    model = build_classifier(cfg.model.to_dict(), seed=0)
    load_weights(model.backbone, read_state_dict(checkpoint), f"checkpoint {str(checkpoint)!r}")
    model.to(dev).eval()
    data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}
    ds = build_split(cfg, split, model, synthetic)
    check_input_shape(model, cfg, ds, f"data.{split}")
    n = len(ds) if limit is None else min(int(limit), len(ds))
    if n < 1:
        raise ValueError(f"--limit {limit}: expected at least 1 sample")
    indices = np.arange(n)
    subset = ds if n == len(ds) else torch.utils.data.Subset(ds, indices.tolist())
    bs = int(batch_size or data.get("samples_per_gpu", 16))
    if bs < 1:
        raise ValueError(f"--batch-size {batch_size}: expected >= 1")
    loader = make_loader(subset, bs, workers, False, pin=dev.type == "cuda")
    t0 = time.perf_counter()
    logits, model_s = predict(model, loader, dev, amp, progress=progress, desc="test")
    wall = time.perf_counter() - t0
    T = int(ds[0]["img"].shape[0])
    res = evaluate_logits(model, ds, logits, indices)
    res.update(samples=n, timestep=T, batch_size=bs, device=str(dev), model_seconds=model_s, wall_seconds=wall,
               frames_per_s=n * T / max(model_s, 1e-9), samples_per_s_end_to_end=n / max(wall, 1e-9),
               checkpoint=str(checkpoint), config=cfg.name, split=split)
    if return_logits:
        res.update(logits=logits, labels=torch.as_tensor(ds.get_gt_labels()[indices]))
    return res


def export_weights(cfg: Config, checkpoint: str | Path, out: str | Path, res: Mapping[str, Any],
                   note: str = "") -> Path:
    """Write a small deployable file: ``dict(state_dict, config, meta)`` (no optimizer state), with the
    evaluation result (and top-1 on the first 200 samples, for quick checks) in ``meta``."""
    try:
        src = load_checkpoint(checkpoint)
        sd, src_meta = src["state_dict"], dict(src.get("meta") or {}, epoch=src.get("epoch"))
    except ValueError:
        sd, src_meta = read_state_dict(checkpoint), {}
    logits, labels = res["logits"], res["labels"]
    first = min(200, len(labels))
    top1_200 = 100.0 * float((class_scores(logits[:first]).argmax(1) == labels[:first]).float().mean())
    meta = dict(config_name=cfg.name, source_checkpoint=str(checkpoint), source_meta=src_meta, note=note,
                test_split=res["split"], test_samples=int(res["samples"]), test_top1=float(res["accuracy_top-1"]),
                test_top5=float(res.get("accuracy_top-5", float("nan"))), test_top1_first200=top1_200,
                frames_per_s=float(res["frames_per_s"]), device=res["device"], torch=str(torch.__version__))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, dict(state_dict={k: v.clone() for k, v in sd.items()}, config=cfg.to_dict(), meta=meta))
    return out


def build_parser() -> argparse.ArgumentParser:
    """The ``bidl-test`` command's flags (``python -m bidl_models.evaluate`` is the same command)."""
    p = argparse.ArgumentParser(prog="bidl-test", description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth) to evaluate: this project's or BIDL's "
                   "(state_dict wrapper or bare, module./backbone. prefixes); a bare name (latest.pth) is looked "
                   "for in ., --work-dir, BIDL's weight_files/classification/<model>/<lif|lifplus>/, "
                   "work_dirs/<config name>/")
    p.add_argument("--work-dir", default=None, help="a training work dir where a bare --checkpoint name is looked for")
    p.add_argument("--synthetic", nargs="?", type=int, const=SYNTHETIC_DEFAULT, default=None, metavar="N",
                   help=f"evaluate N seeded random samples of the model's input (default {SYNTHETIC_DEFAULT}) "
                        "instead of the config's data")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="default data.samples_per_gpu")
    p.add_argument("--split", default="test", choices=("test", "val"), help="which data.* set (default test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--amp", nargs="?", const="fp16", default=None, choices=["fp16", "bf16"],
                   help="mixed precision: fp16 (CUDA only; --amp alone) or bf16 (CUDA or CPU)")
    p.add_argument("--out", help="write the result as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--export-to", help="also write the weights + config + this result as a small .pth here")
    p.add_argument("--note", default="", help="free text stored in the exported file's meta (e.g. the command)")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def format_result(res: Mapping[str, Any]) -> str:
    accs = "  ".join([f"{k} {v:.2f}%" for k, v in res.items() if k.startswith("accuracy_")]
                     + ([f"loss {res['loss']:.4f}"] if "loss" in res else []))
    return (f"{res['config']} on data.{res['split']} ({res['samples']} samples, T={res['timestep']}, batch "
            f"{res['batch_size']}, {res['device']}): {accs}\n"
            f"speed: {res['frames_per_s']:.1f} time-step frames/s in the model "
            f"({res['model_seconds']:.2f} s), {res['samples_per_s_end_to_end']:.1f} samples/s end to end")


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Parse ``argv``, evaluate, print the result; the result dict (``--out``'s JSON)."""
    args = parse_args(argv)
    if args.synthetic is not None and args.synthetic < 1:
        raise ValueError(f"--synthetic {args.synthetic}: expected an int >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options, args.config_root)
    print(describe_source(cfg))
    ckpt = resolve_checkpoint(args.checkpoint, cfg, args.work_dir)
    print(f"checkpoint: {ckpt}", flush=True)
    res = evaluate_checkpoint(cfg, ckpt, args.device, args.batch_size, args.limit, args.split,
                              args.workers, args.amp, progress=not args.no_progress, return_logits=True,
                              synthetic=args.synthetic)
    print(format_result(res))
    if args.export_to:
        print(f"exported: {export_weights(cfg, ckpt, args.export_to, res, args.note)}")
    res = {k: v for k, v in res.items() if k not in ("logits", "labels")}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``bidl-test`` CLI: 0 after printing the result (errors raise, see :func:`bidl_grid.command.run_command`)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
