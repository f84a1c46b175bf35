"""Train a config's model: ``python -m bidl_models.train --config NAME_OR_PATH [options]``.

The config is found as BIDL's tools find it (:func:`bidl_models.config.locate_config`: a BIDL
checkout's ``applications/classification/`` first, then ``--config-root DIR``, ``$BIDL_CONFIG_ROOT``,
``./configs``, the shipped ones); the command prints ``config: <file>`` (and which copy won when the
name is found in several places). The run itself is :class:`bidl_models.trainer.Trainer`.

Options: ``--work-dir DIR`` (default ``work_dirs/<config name>``); ``--resume`` (continue from the work
dir's ``latest.pth``, or its newest ``epoch_N.pth``; ``--resume PATH``: from that file); ``--resume-from
CKPT`` (BIDL's flag: a path, or a file name in the work dir, e.g. ``latest.pth``; also the config's
``resume_from``); ``--load-from CKPT`` (weights only, for fine-tuning; also the config's ``load_from``);
``--max-epochs N`` (instead of ``runner.max_epochs``), ``--max-iters N`` (stop after global iteration N,
saving ``latest.pth`` mid-epoch: a short run that ``--resume`` continues exactly), ``--synthetic [N]``
(N seeded random samples of the model's input instead of the config's data, default 64, a quarter of
that for validation: no data files needed); ``--cfg-options key.sub=value ...``, ``--seed``,
``--device``, ``--amp`` (mixed precision on CUDA; also the config's ``fp16``), ``--threads``,
``--workers``, ``--no-progress``, ``--no-tensorboard``.
Multi-GPU: ``torchrun --nproc_per_node N -m bidl_models.train --config ...`` (DDP; rank 0 writes).

The config supplies ``model``, ``data`` (``samples_per_gpu``, ``workers_per_gpu``, ``data_root``, ``train``,
``val`` or ``test``), ``optimizer`` (SGD, Adam, AdamW, RMSprop), ``optimizer_config.grad_clip``,
``lr_config`` (mmcv's CosineAnnealing / step / fixed, or a torch scheduler class name with its
arguments: see :mod:`bidl_models.schedule`), BIDL's top-level ``warmup``, ``fp16=dict(loss_scale)``,
``runner.max_epochs``, ``checkpoint_config.interval`` / ``max_keep_ckpts``, ``evaluation.interval``,
``log_config.interval``. Keys BIDL ignores (``runner.type``, ``log_config.hooks``, ``dist_params``,
``workflow``, other ``checkpoint_config`` keys) are ignored here too. ``--resume`` / ``--resume-from`` and
``--load-from`` take BIDL's ``tools/train.py`` checkpoints as well as this project's
(see :mod:`bidl_models.checkpoint`).

Written to the work dir:

* ``<config name>.py``: the merged config (``_base_`` files and ``--cfg-options`` applied), a config file;
* ``epoch_N.pth`` every ``checkpoint_config.interval`` epochs and after the last one, the newest
  ``max_keep_ckpts`` of them kept (mmcv's key; default: all); ``latest.pth``: the newest (a hard link
  where the file system allows); ``best.pth``: the best validation top-1;
* ``<time>.log`` (text) and ``<time>.log.json`` (mmcv's json log; format in :mod:`bidl_models.train_log`);
* ``curves.png``: loss, top-1 accuracy and learning rate against epochs, including the runs this one
  resumed (needs matplotlib);
* ``tf_logs/``: TensorBoard scalars, when the ``tensorboard`` package is installed.

A checkpoint is ``dict(state_dict, optimizer, scheduler, epoch, config, meta)`` (plus ``rng`` mid-epoch);
``state_dict`` keys are the classifier's (``backbone.*``). Ctrl-C or SIGTERM (a batch scheduler's stop)
lets the current iteration finish, saves ``latest.pth`` with the position inside the epoch (iterations
done, the sampler's position, RNG states; ``meta.interrupted=True``), ``curves.png`` and the log, and
exits with status 130 (Ctrl-C or SIGTERM); a second signal quits at once without saving. The last
log line says what this process did (epochs and iterations trained here, where a resumed run started).
Resuming it continues exactly: the same learning rate at every iteration, the same batches and
augmentations (:mod:`bidl_models.sampler`) and, on CPU, bit-identical weights as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional, Sequence

import torch

from bidl_grid.command import run_command

from .config import add_config_arguments, describe_source, load_config
from .trainer import IterCallback, Stopped, Trainer, TrainOptions

SYNTHETIC_DEFAULT = 64


def build_parser() -> argparse.ArgumentParser:
    """The ``bidl-train`` command's flags (``python -m bidl_models.train`` is the same command)."""
    p = argparse.ArgumentParser(prog="bidl-train", description=__doc__.split("\n\n")[0])
    add_config_arguments(p)
    p.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="resume training: from the work dir's latest checkpoint, or from PATH (model, optimizer, "
                        "scheduler, epoch and, after a stop, the position inside the epoch)")
    p.add_argument("--resume-from", help="BIDL's flag: checkpoint to resume, a path or a file name in the work dir")
    p.add_argument("--load-from", help="weights to start from (fine-tuning); overrides the config's load_from")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N", help="train N epochs (runner.max_epochs)")
    p.add_argument("--max-iters", type=int, default=None, metavar="N",
                   help="stop after global iteration N, saving latest.pth (resumable) even mid-epoch")
    p.add_argument("--synthetic", nargs="?", type=int, const=SYNTHETIC_DEFAULT, default=None, metavar="N",
                   help=f"train on N seeded random samples of the model's input (default {SYNTHETIC_DEFAULT}; "
                        "validate on N/4): no data files needed")
    p.add_argument("--seed", type=int, default=None, help="seed of weights, data order, augmentation (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--amp", nargs="?", const="fp16", default=None, choices=["fp16", "bf16"],
                   help="mixed precision: fp16 (CUDA; what --amp alone and BIDL's fp16 key give) or bf16 (CUDA or CPU)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default data.workers_per_gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def options(args: argparse.Namespace) -> TrainOptions:
    """The trainer's options from the parsed flags."""
    return TrainOptions(work_dir=args.work_dir, resume=args.resume, resume_from=args.resume_from,
                        load_from=args.load_from, seed=args.seed, device=args.device, amp=args.amp,
                        workers=args.workers, progress=not args.no_progress, tensorboard=not args.no_tensorboard,
                        max_epochs=args.max_epochs, max_iters=args.max_iters, synthetic=args.synthetic)


def run(argv: Optional[Sequence[str]] = None, callbacks: Sequence[IterCallback] = ()) -> dict[str, Any]:
    """Parse ``argv``, load the config, train; the run's summary (:meth:`Trainer.run`). Raises
    :class:`~bidl_models.trainer.Stopped` after Ctrl-C / SIGTERM (latest.pth saved)."""
    args = parse_args(argv)
    opts = options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options, args.config_root)
    print(describe_source(cfg), flush=True)
    trainer = Trainer(cfg, opts, callbacks)
    try:
        return trainer.run()
    finally:
        if trainer.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: 0 when training ends (all epochs, or ``--max-iters``); 130 after SIGTERM (latest.pth
    saved); Ctrl-C raises KeyboardInterrupt (130 from :func:`bidl_grid.command.run_command`)."""
    try:
        run(argv)
    except Stopped as e:
        if e.signum == signal.SIGINT:
            raise
        print(f"stopped by {signal.Signals(e.signum).name}: latest.pth saved; continue with --resume",
              file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
