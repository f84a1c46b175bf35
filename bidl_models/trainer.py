"""One training run: :class:`Trainer`, built from a loaded config and :class:`TrainOptions` (what
``bidl_models.train``'s flags say), and the pieces it is made of (optimizer, checkpoint settings,
logging, distributed setup).

A run trains ``runner.max_epochs`` epochs (``max_epochs`` overrides it), or stops after global
iteration ``max_iters``, validating every ``evaluation.interval`` epochs and writing to the work dir
(see :mod:`bidl_models.train` for the files). A stop signal (Ctrl-C = SIGINT, or SIGTERM, a batch
scheduler's stop) lets the current iteration finish, then saves ``latest.pth`` with the position
inside the epoch, ``curves.png`` and the log, and raises :class:`Stopped`; a second signal quits at
once. ``max_iters`` reached mid-epoch saves the same way and returns. Resuming such a checkpoint
continues exactly (:mod:`bidl_models.sampler`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import (
    find_checkpoint, find_latest_checkpoint, link_or_copy, load_checkpoint, load_weights, read_state_dict,
    save_checkpoint, strip_prefixes,
)
from .classifier import build_classifier
from .config import Config, dump_config
from .inference import (
    STOP_SIGNALS, Interrupted, amp_dtype, evaluate_logits, ignore_stop_signals, make_loader, predict, resolve_device,
    worker_context,
)
from .model_input import build_split, check_input_shape
from .registry import check_kwargs
from .sampler import EpochSampler, SeededSamples, rng_state, set_rng_state
from .schedule import LrSchedule
from .train_log import JsonLog, Meter, acc_key, env_info, plot_curves, text_line, train_record, val_record

OPTIMIZERS = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
              "RMSprop": torch.optim.RMSprop}
CURVES_PNG = "curves.png"

log = logging.getLogger("bidl_models.trainer")


class Stopped(KeyboardInterrupt):
    """Raised by :meth:`Trainer.run` after a stop signal, once ``latest.pth`` is saved: ``signum`` the
    signal, ``exit_code`` 130 for either (SIGTERM stops as Ctrl-C does, as every command of this project)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = int(signum), 130


@dataclass(frozen=True)
class TrainOptions:
    """A training run's settings besides its config (``bidl_models.train``'s flags).

    ``resume``: ``'auto'`` (the work dir's latest checkpoint) or a path; ``resume_from``: BIDL's (a path,
    or a file name in the work dir); ``load_from``: weights to start from; ``amp``: ``'fp16'`` or
    ``'bf16'``; ``workers``: DataLoader workers (None: ``data.workers_per_gpu``); ``max_epochs``
    overrides ``runner.max_epochs``; ``max_iters`` stops after that global iteration; ``synthetic``:
    that many seeded synthetic training samples (a quarter of it for validation) instead of the data.
    """

    work_dir: Optional[str] = None
    resume: Optional[str] = None
    resume_from: Optional[str] = None
    load_from: Optional[str] = None
    seed: Optional[int] = None
    device: str = "auto"
    amp: Optional[str] = None
    workers: Optional[int] = None
    progress: bool = True
    tensorboard: bool = True
    max_epochs: Optional[int] = None
    max_iters: Optional[int] = None
    synthetic: Optional[int] = None

    def __post_init__(self) -> None:
        for flag, v, low in (("--max-epochs", self.max_epochs, 1), ("--max-iters", self.max_iters, 1),
                             ("--synthetic", self.synthetic, 1), ("--workers", self.workers, 0)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"{flag} {v!r}: expected an int >= {low}")
        if self.resume and self.resume_from:
            raise ValueError(f"--resume {self.resume if self.resume != 'auto' else ''} and --resume-from "
                             f"{self.resume_from}: give one of them")


# ---------------------------------------------------------------------------------------- pieces

def build_optimizer(model: nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """``dict(type='SGD'|'Adam'|'AdamW'|'RMSprop', lr=..., ...)`` over the model's parameters."""
    cfg = dict(cfg)
    typ = cfg.pop("type", None)
    if typ not in OPTIMIZERS:
        raise ValueError(f"optimizer.type={typ!r}: expected one of {sorted(OPTIMIZERS)}")
    if cfg.pop("paramwise_cfg", None):
        raise ValueError("optimizer.paramwise_cfg is not supported; remove it")
    if "lr" not in cfg:
        raise ValueError(f"optimizer: missing key 'lr' (type={typ!r})")
    try:
        check_kwargs(OPTIMIZERS[typ], {"params": None, **cfg}, f"optimizer type={typ!r}")
    except ValueError as e:
        hint = (" (a key inherited from a _base_ schedule? write optimizer = dict(_delete_=True, ...))"
                if "unexpected" in str(e) else "")
        raise ValueError(f"{e}{hint}") from None
    # every parameter, frozen ones too (they get no gradient, so no update): the same list, in the same
    # order, as BIDL's optimizer over model.parameters(), so BIDL's optimizer states load
    return OPTIMIZERS[typ](list(model.parameters()), **cfg)


DATA_KEYS = ("samples_per_gpu", "workers_per_gpu", "data_root", "train", "val", "test", "test_gpu")
RUNNER_KEYS = ("type", "max_epochs")


def check_sections(cfg: Mapping[str, Any]) -> None:
    """ValueError naming an unknown key of ``data`` or ``runner`` (a typo there would silently train
    with a default); ``runner.type`` is accepted and ignored, as BIDL does."""
    for name, allowed in (("data", DATA_KEYS), ("runner", RUNNER_KEYS)):
        sec = cfg.get(name) or {}
        bad = sorted(set(sec) - set(allowed))
        if bad:
            hint = " (iteration-based runners are not supported: give max_epochs)" if "max_iters" in bad else ""
            raise ValueError(f"{name}: unexpected key(s) {bad}; accepted keys: {list(allowed)}{hint}")


def fp16_loss_scale(fp16: Any) -> Optional[float]:
    """BIDL's ``fp16=dict(loss_scale=512.)`` -> the GradScaler's initial scale (None: its default,
    for ``loss_scale='dynamic'`` or no loss_scale); ValueError for other keys."""
    if not fp16:
        return None
    if not isinstance(fp16, Mapping):
        raise ValueError(f"fp16={fp16!r}: expected dict(loss_scale=...) or None")
    bad = sorted(set(fp16) - {"loss_scale"})
    if bad:
        raise ValueError(f"fp16: unexpected key(s) {bad}; accepted keys: ['loss_scale']")
    scale = fp16.get("loss_scale")
    if scale is None or scale == "dynamic":
        return None
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
        raise ValueError(f"fp16.loss_scale={scale!r}: expected a positive number or 'dynamic'")
    return float(scale)


def tensorboard_writer(logdir: Path) -> Any:
    """A SummaryWriter, or None (with a log line) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # noqa: BLE001 - tensorboard is optional
        log.info("TensorBoard scalars disabled (%s: %s); `pip install tensorboard` to enable",
                 type(e).__name__, e)
        return None
    return SummaryWriter(str(logdir))


def checkpoint_settings(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(``checkpoint_config.interval``, ``max_keep_ckpts``; <= 0 keeps all, as mmcv's -1)."""
    cc = cfg.get("checkpoint_config") or {}
    interval, keep = cc.get("interval", 1), cc.get("max_keep_ckpts", -1)
    for name, v in (("interval", interval), ("max_keep_ckpts", keep)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"checkpoint_config.{name}={v!r}: expected an int")
    if interval < 1:
        raise ValueError(f"checkpoint_config.interval={interval}: expected >= 1")
    return interval, keep


class TqdmHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: a warning logged while a progress bar is
    open is printed on a line of its own above the bar, never onto the bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging's rule: a failing handler reports, never raises
            self.handleError(record)


def setup_logging(work_dir: Path, stamp: str, rank: int) -> Path:
    """The run's log: ``<work_dir>/<stamp>.log`` and stdout (rank 0), for every ``bidl_models`` logger
    (the trainer's lines and the models' warnings, e.g. an input of another T than ``timestep``)."""
    pkg = logging.getLogger("bidl_models")
    close_logging()
    pkg.setLevel(logging.INFO)
    pkg.propagate = False
    path = work_dir / f"{stamp}.log"
    if rank == 0:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        sh = TqdmHandler(sys.stdout)       # a line printed while a progress bar is open goes above it
        sh.setFormatter(fmt)
        pkg.addHandler(fh)
        pkg.addHandler(sh)
    else:
        pkg.addHandler(logging.NullHandler())
    return path


def close_logging() -> None:
    """Undo :func:`setup_logging`: the ``bidl_models`` logger without handlers, propagating again."""
    pkg = logging.getLogger("bidl_models")
    for h in list(pkg.handlers):
        pkg.removeHandler(h)
        h.close()
    pkg.propagate = True
    pkg.setLevel(logging.NOTSET)


class DistInfo:
    """Rank / world size from torchrun's environment (single process when absent)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    def init(self, device: torch.device) -> None:
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend=backend)


# ---------------------------------------------------------------------------------------- trainer

IterCallback = Callable[["Trainer", dict], None]


class Trainer:
    """One training run of a loaded config with :class:`TrainOptions`. ``callbacks`` are called after
    every iteration with ``dict(iter, lr, loss)`` (``iter``: the 0-based global iteration just done)."""

    def __init__(self, cfg: Config, opts: TrainOptions = TrainOptions(), callbacks: Sequence[IterCallback] = ()):
        self.cfg, self.opts, self.callbacks = cfg, opts, list(callbacks)
        self.dist = DistInfo()
        self.device = resolve_device(opts.device, self.dist.local_rank)
        self.dist.init(self.device)
        self.rank0 = self.dist.rank == 0
        self.work_dir = Path(opts.work_dir or cfg.get("work_dir") or Path("work_dirs") / cfg.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stamp = base = time.strftime("%Y%m%d_%H%M%S")
        while any((self.work_dir / f"{stamp}{ext}").exists() for ext in (".log", ".log.json")):
            stamp = f"{base}_{int(stamp[len(base) + 1:] or 0) + 1}"      # a second run in the same second
        self.log_path = setup_logging(self.work_dir, stamp, self.dist.rank)
        try:
            self._setup(cfg, opts, stamp)
        except BaseException:
            close_logging()              # a trainer that failed to build leaves no handler on the logger
            raise

    def close(self) -> None:
        """Release the run's log handlers (done by :meth:`run`; for a trainer built but never run)."""
        close_logging()

    def _setup(self, cfg: Config, opts: TrainOptions, stamp: str) -> None:
        """The rest of ``__init__``, once the run's log is open: data, model, optimiser, schedule."""
        self.json_path = self.work_dir / f"{stamp}.log.json"
        self.json = JsonLog(self.json_path, enabled=self.rank0)
        self.resume_path = self.resume_source(opts, cfg)
        resumed = load_checkpoint(self.resume_path) if self.resume_path else None
        ck_seed = ((resumed or {}).get("meta") or {}).get("seed")
        self.seed = int(opts.seed if opts.seed is not None else ck_seed if ck_seed is not None
                        else cfg.get("seed", 0) or 0)
        random.seed(self.seed + self.dist.rank)
        np.random.seed(self.seed + self.dist.rank)
        torch.manual_seed(self.seed + self.dist.rank)
        self.loss_scale = fp16_loss_scale(cfg.get("fp16"))
        want = opts.amp or ("fp16" if cfg.get("fp16") else None)       # BIDL's fp16 key: fp16 with a loss scale
        self.amp_dtype = amp_dtype(want, self.device)
        self.amp = self.amp_dtype is not None
        self.amp_name = (want if want is not True else "fp16") if self.amp else None
        if want and not self.amp:
            log.info("AMP requested but the device is %s: training in fp32 (fp16 needs CUDA; --amp bf16 runs on CPU)",
                     self.device)

        data = cfg.get("data") if isinstance(cfg.get("data"), Mapping) else {}
        check_sections(cfg)
        self.batch = int(data.get("samples_per_gpu", 16))
        self.workers = int(data.get("workers_per_gpu", 0) if opts.workers is None else opts.workers)
        self.model = build_classifier(cfg.model.to_dict(), seed=self.seed).to(self.device)
        n = opts.synthetic
        self.train_set = build_split(cfg, "train", self.model, n, self.seed)
        val_key = "val" if (n or "val" in data) else "test" if "test" in data else None
        self.val_key = f"data.{val_key}" if val_key else None
        self.val_set = build_split(cfg, val_key, self.model, n and max(1, n // 4), self.seed) if val_key else None
        if n:
            log.info("--synthetic: training on %s, validating on %s", self.train_set.source, self.val_set.source)
        check_input_shape(self.model, cfg, self.train_set, "data.train")
        if self.val_set is not None:
            check_input_shape(self.model, cfg, self.val_set, self.val_key)

        load_from = opts.load_from or cfg.get("load_from")
        if load_from:
            load_weights(self.model.backbone, read_state_dict(load_from), f"load_from {str(load_from)!r}")
            log.info("loaded weights from %s", load_from)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.sampler = EpochSampler(len(self.train_set), self.seed, True, self.dist.rank, self.dist.world)
        self.train_loader = torch.utils.data.DataLoader(
            SeededSamples(self.train_set, self.seed), batch_size=self.batch, sampler=self.sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=False,
            persistent_workers=self.workers > 0, worker_init_fn=ignore_stop_signals,
            multiprocessing_context=worker_context(self.workers),
            generator=torch.Generator().manual_seed(self.seed))    # its base seed must not draw from torch's RNG
        self.ipe = math.ceil(self.sampler.per_rank / self.batch)        # iterations in a whole epoch
        self.val_loader: Optional[torch.utils.data.DataLoader] = None
        self.val_indices = np.zeros(0, np.int64)
        self.max_epochs = int(opts.max_epochs or (cfg.get("runner") or {}).get("max_epochs", 1))
        self.max_iters = opts.max_iters
        self.optimizer = build_optimizer(self.model, cfg.optimizer.to_dict())
        self.scheduler = LrSchedule(self.optimizer, cfg.get("lr_config", {}), self.ipe, self.max_epochs,
                                    warmup=cfg.get("warmup"))
        scale = {"init_scale": self.loss_scale} if self.loss_scale else {}
        # a loss scale guards fp16's narrow range; bf16 has fp32's exponent and needs none
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16, **scale)
        gc = (cfg.get("optimizer_config") or {}).get("grad_clip")
        self.grad_clip = dict(gc) if gc else None
        self.ckpt_interval, self.max_keep_ckpts = checkpoint_settings(cfg)
        self.eval_interval = int((cfg.get("evaluation") or {}).get("interval", 1))
        self.log_interval = int((cfg.get("log_config") or {}).get("interval", 50))
        self.topk = tuple(self.model.head.topk)
        self.epoch, self.iter, self.inner_iter, self.best_top1, self.best_epoch = 0, 0, 0, -1.0, 0
        self.val_pending = False
        self.saved_epochs: list[int] = []
        self.json_logs: list[str] = [str(self.json_path.resolve())]
        self.history: list[dict] = []
        self._resume_rng: Optional[dict] = None
        self._stop = 0                                      # the stop signal received (0: none)
        self._iter_time = (0.0, 0)                          # (seconds, iterations) timed in this run, for the ETA
        if resumed is not None:
            self.resume(resumed, self.resume_path)
        self.start = (self.epoch, self.inner_iter, self.iter)     # where this process starts
        self.tb = tensorboard_writer(self.work_dir / "tf_logs") if (self.rank0 and opts.tensorboard) else None

    # ----------------------------------------------------------------- resuming
    def resume_source(self, opts: TrainOptions, cfg: Mapping[str, Any]) -> Optional[Path]:
        """The checkpoint to resume: ``--resume`` (the work dir's latest, or a path), ``--resume-from``,
        or the config's ``resume_from``; None to start afresh."""
        resume = opts.resume
        if resume == "auto":
            found = find_latest_checkpoint(self.work_dir)
            if found is None:
                log.info("--resume: no latest.pth or epoch_N.pth in %s: training from scratch", self.work_dir)
            return found
        if resume:
            return find_checkpoint(resume, self.work_dir, "--resume")
        if opts.resume_from:
            return find_checkpoint(opts.resume_from, self.work_dir, "--resume-from")
        if cfg.get("resume_from"):
            return find_checkpoint(cfg["resume_from"], self.work_dir, "resume_from")
        return None

    def resume(self, ck: Mapping[str, Any], path: str | Path) -> None:
        """Continue from a checkpoint of this project or of BIDL's ``tools/train.py``; a checkpoint saved
        by Ctrl-C mid-epoch continues at its iteration, sampler position and RNG states."""
        where = f"resume_from {str(path)!r}"
        load_weights(self.model.backbone, strip_prefixes(ck["state_dict"]), where)
        for key in ("optimizer", "epoch"):
            if ck.get(key) is None:
                raise ValueError(f"{where}: the checkpoint has no {key!r} state "
                                 "(use load_from for weights-only files)")
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"{where}: its optimizer state does not fit optimizer={dict(self.cfg.optimizer)} "
                             f"over this model's {len(list(self.model.parameters()))} parameters: {e}") from None
        self.epoch = int(ck["epoch"])
        meta = ck.get("meta") or {}
        pos = meta.get("position") or {}
        inner = int(pos.get("inner_iter", 0))
        if inner:
            now = dict(batch=self.batch, world=self.dist.world, samples=len(self.train_set), seed=self.seed)
            changed = {k: (pos.get(k), v) for k, v in now.items() if pos.get(k) != v}
            if changed or inner >= self.ipe:
                log.warning("%s: saved %d iterations into epoch %d, but %s changed since: epoch %d restarts "
                            "from its first iteration", where, inner, self.epoch + 1,
                            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()) or "the epoch length",
                            self.epoch + 1)
                inner = 0
            else:
                rng = ck.get("rng")
                self._resume_rng = rng[self.dist.rank] if isinstance(rng, list) and len(rng) == self.dist.world \
                    else None
        self.inner_iter = inner
        self.iter = self.epoch * self.ipe + inner
        if meta.get("iter") is not None and int(meta["iter"]) != self.iter:
            log.info("%s: its iteration count %d becomes %d (%d iterations per epoch now)", where, meta["iter"],
                     self.iter, self.ipe)
        # mmcv policies are closed forms of the iteration; a torch scheduler needs its saved state
        self.scheduler.load_state_dict(ck.get("scheduler") or {}, fallback_iter=self.iter)
        if self.scaler.is_enabled() and "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        self.best_top1 = float(meta.get("best_top1", -1.0))
        self.best_epoch = int(meta.get("best_epoch", 0))
        self.val_pending = bool(meta.get("val_pending")) and inner == 0 and self.val_set is not None
        self.saved_epochs = [int(e) for e in meta.get("saved_epochs", [])]
        self.json_logs = [str(p) for p in meta.get("json_logs", []) if str(p) != self.json_logs[0]] + self.json_logs
        log.info("resumed from %s at epoch %d iteration %d/%d (global iteration %d)%s", path, self.epoch + 1,
                 inner, self.ipe, self.iter, "; its validation is pending" if self.val_pending else "")

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self, interrupted: bool = False, val: Optional[Mapping[str, float]] = None,
                   rng: Optional[list] = None, stopped: Optional[str] = None) -> dict:
        """The checkpoint dict; ``interrupted``: saved by a stop signal, ``stopped``: why the run ended
        early (``'SIGINT'``, ``'SIGTERM'``, ``'max_iters'``)."""
        meta = dict(config_name=self.cfg.name, epoch=self.epoch, iter=self.iter, best_top1=self.best_top1,
                    best_epoch=self.best_epoch, seed=self.seed, interrupted=interrupted, val_pending=self.val_pending,
                    stopped=stopped,
                    position=dict(inner_iter=self.inner_iter, batch=self.batch, world=self.dist.world,
                                  samples=len(self.train_set), seed=self.seed, iters_per_epoch=self.ipe),
                    saved_epochs=list(self.saved_epochs), json_logs=list(self.json_logs),
                    torch=str(torch.__version__), time=time.strftime("%Y-%m-%d %H:%M:%S"))
        if val:
            meta["val"] = dict(val)
        ck = dict(state_dict=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                  scheduler=self.scheduler.state_dict(), epoch=self.epoch, config=self.cfg.to_dict(), meta=meta)
        if rng is not None:
            ck["rng"] = rng
        if self.scaler.is_enabled():
            ck["scaler"] = self.scaler.state_dict()
        return ck

    def save(self, name: str, **kw: Any) -> Path:
        """Write ``name`` in the work dir (rank 0; every rank must call it: mid-epoch it gathers the RNG
        states of all ranks)."""
        rng = None
        if self.inner_iter:
            rng = [rng_state()]
            if self.dist.enabled:
                rng = [None] * self.dist.world
                torch.distributed.all_gather_object(rng, rng_state())
        path = self.work_dir / name
        if self.rank0:
            save_checkpoint(path, self.checkpoint(rng=rng, **kw))
        return path

    def save_epoch(self) -> None:
        """``epoch_N.pth`` and ``latest.pth``, then only the newest ``max_keep_ckpts`` epoch files."""
        saved = [e for e in self.saved_epochs if e != self.epoch] + [self.epoch]
        k = self.max_keep_ckpts
        old, self.saved_epochs = (saved[:-k], saved[-k:]) if 0 < k < len(saved) else ([], saved)
        path = self.save(f"epoch_{self.epoch}.pth")
        if not self.rank0:
            return
        link_or_copy(path, self.work_dir / "latest.pth")
        for e in old:                           # only files this run (or the runs it resumed) wrote
            (self.work_dir / f"epoch_{e}.pth").unlink(missing_ok=True)

    # ----------------------------------------------------------------- stopping
    def _on_signal(self, signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM: stop after this iteration and save; a second one quits at once."""
        if self._stop:
            raise KeyboardInterrupt
        self._stop = int(signum)
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        try:
            os.write(2, f"\n{what}: finishing this iteration, then saving latest.pth (a second signal quits "
                        "without saving)\n".encode())
        except OSError:
            pass

    def stop_requested(self) -> int:
        """The stop signal received (0: none), on any rank (every rank must call it at the same point)."""
        if not self.dist.enabled:
            return self._stop
        t = torch.tensor([float(self._stop)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        self._stop = int(t.item())
        return self._stop

    def iter_limit_reached(self) -> bool:
        """``max_iters`` global iterations are done."""
        return self.max_iters is not None and self.iter >= self.max_iters

    # ----------------------------------------------------------------- loops
    def seed_epoch(self) -> None:
        """Per-epoch seeds of the model's randomness (noise, dropout) in the training process."""
        random.seed(self.seed * 1_000_003 + self.epoch * 1009 + self.dist.rank)
        np.random.seed([self.seed, self.epoch, self.dist.rank])
        torch.manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + self.dist.rank)

    def memory_mb(self) -> Optional[int]:
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.device) / 2 ** 20)

    def log_train(self, window: Meter, lr: float) -> None:
        rec = train_record(self.epoch + 1, self.inner_iter, lr, window, self.memory_mb())
        secs, n = self._iter_time
        eta = secs / n * (self.max_epochs * self.ipe - self.iter) if n else None
        log.info(text_line(rec, self.ipe, eta))
        self.json.write(rec)

    def train_epoch(self) -> dict[str, float]:
        """Train the rest of the current epoch (all of it unless resumed mid-epoch); :class:`Interrupted`
        after the iteration during which a stop signal came, or the ``max_iters``-th (mid-epoch)."""
        from tqdm import tqdm
        self.net.train()
        start = self.inner_iter
        if start == 0:
            self.seed_epoch()
        elif self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        self.sampler.set_epoch(self.epoch, start * self.batch)
        total, window = Meter(self.topk), Meter(self.topk)
        bar = tqdm(total=self.ipe, initial=start, desc=f"epoch {self.epoch + 1}/{self.max_epochs}",
                   disable=not (self.rank0 and self.opts.progress), dynamic_ncols=True)
        batches = iter(self.train_loader)
        t_mark = time.perf_counter()
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except RuntimeError:                   # a DataLoader worker that got the Ctrl-C too
                    if self._stop:
                        raise Interrupted from None
                    raise
                data_s = time.perf_counter() - t_mark
                img = batch["img"].to(self.device, non_blocking=True)
                label = batch["gt_label"].to(self.device, non_blocking=True).long().view(-1)
                lr = self.scheduler.apply(self.iter)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    logits = self.net(img)
                loss = self.model.head.compute_loss(logits.float(), label)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1} iter "
                                             f"{self.inner_iter + 1}; lower optimizer.lr or set "
                                             "optimizer_config.grad_clip")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if self.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.model.parameters(), **self.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.iter += 1
                self.inner_iter += 1
                loss_v = loss.item()
                correct = self.model.head.correct(logits, label)
                step_s = time.perf_counter() - t_mark
                self._iter_time = (self._iter_time[0] + step_s, self._iter_time[1] + 1)
                for m in (total, window):
                    m.update(loss_v, correct, label.numel(), step_s, data_s)
                bar.update(1)
                bar.set_postfix(loss=f"{total.loss / max(total.n, 1):.4f}", lr=f"{lr:.2e}")
                if self.tb is not None:
                    self.tb.add_scalar("iter/loss", loss_v, self.iter)
                    self.tb.add_scalar("iter/lr", lr, self.iter)
                for cb in self.callbacks:
                    cb(self, dict(iter=self.iter - 1, lr=lr, loss=loss_v))
                last = self.inner_iter >= self.ipe
                stopping = not last and (self.stop_requested() or self.iter_limit_reached())
                if (self.log_interval and self.inner_iter % self.log_interval == 0) or last or stopping:
                    self.log_train(window, lr)
                    window.reset()
                if stopping:
                    raise Interrupted
                t_mark = time.perf_counter()
        finally:
            bar.close()
        total.reduce(self.dist.enabled, self.device)
        return dict(total.metrics(), lr=self.optimizer.param_groups[0]["lr"], time=total.time)

    def validate(self) -> dict[str, float]:
        """Metrics of the validation set (:func:`evaluate_logits`); :class:`Interrupted` on a stop signal."""
        ds = self.val_set
        assert ds is not None
        if self.val_loader is None:
            sampler = None
            self.val_indices = np.arange(len(ds))
            if self.dist.enabled:
                sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=False)
                self.val_indices = np.array(list(iter(sampler)))
            self.val_loader = make_loader(ds, self.batch, self.workers, False, 0, sampler,
                                          pin=self.device.type == "cuda")
        indices = self.val_indices
        logits, _ = predict(self.model, self.val_loader, self.device, self.amp_name, progress=self.rank0 and
                            self.opts.progress, desc="val", stop=self.stop_requested)
        if self.dist.enabled:
            parts: list = [None] * self.dist.world
            torch.distributed.all_gather_object(parts, (indices, logits))
            order = {}
            for idx, lg in parts:
                for j, k in enumerate(idx):
                    order[int(k)] = lg[j]
            indices = np.arange(len(ds))
            logits = torch.stack([order[int(k)] for k in indices])
        return evaluate_logits(self.model, ds, logits, indices)

    def finish_epoch(self, train: Optional[Mapping[str, float]]) -> None:
        """After epoch ``self.epoch``'s iterations: validation (when due), best / epoch checkpoints, logs."""
        val = None
        if self.val_pending:
            val = self.validate()
            self.val_pending = False
            lr = self.optimizer.param_groups[0]["lr"]
            rec = val_record(self.epoch, len(self.val_loader), lr, val)
            log.info(text_line(rec, self.ipe))
            self.json.write(rec)
            if val[acc_key(1)] > self.best_top1:
                self.best_top1, self.best_epoch = val[acc_key(1)], self.epoch
                self.save("best.pth", val=val)
        if self.epoch % self.ckpt_interval == 0 or self.epoch == self.max_epochs:
            self.save_epoch()
        parts = []
        if train is not None:
            parts.append("train " + ", ".join(f"{k} {v:.4g}" for k, v in train.items()))
        if val is not None:
            parts.append("val " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
        log.info("epoch %d/%d (iter %d): %s", self.epoch, self.max_epochs, self.iter, "; ".join(parts) or "-")
        self.history.append(dict(epoch=self.epoch, iter=self.iter, train=dict(train) if train else None, val=val))
        if self.tb is not None:
            for split, res in (("train", train), ("val", val)):
                for k, v in (res or {}).items():
                    self.tb.add_scalar(f"{split}/{k}", v, self.epoch)
            self.tb.flush()

    def write_run_info(self) -> None:
        """The merged config in the work dir, and the json log's first line (mmcv: the runner's meta) (rank 0)."""
        if not self.rank0:
            return
        path = self.work_dir / f"{self.cfg.name}.py"
        try:
            text = dump_config(self.cfg, path, f"merged config of {self.cfg.filename or self.cfg.name}\nwritten by "
                                               f"bidl_models.train at {time.strftime('%Y-%m-%d %H:%M:%S')}").read_text()
        except ValueError as e:
            log.warning("the merged config is not written to the work dir: %s", e)
            text = json.dumps(self.cfg.to_dict(), default=repr, indent=1)
        self.json.write(dict(env_info=env_info(), seed=self.seed, exp_name=Path(self.cfg.filename or self.cfg.name).name,
                             config=text, config_name=self.cfg.name, work_dir=str(self.work_dir),
                             device=str(self.device), world_size=self.dist.world, iters_per_epoch=self.ipe,
                             max_epochs=self.max_epochs, resumed_from=str(self.resume_path) if self.resume_path
                             else None, start_iter=self.iter))

    def plot(self) -> Optional[Path]:
        """``curves.png`` from this run's json log and those of the runs it resumed (rank 0)."""
        if not self.rank0:
            return None
        try:
            path = plot_curves([Path(p) for p in self.json_logs], self.work_dir / CURVES_PNG, self.ipe, self.cfg.name)
        except ImportError as e:
            log.info("no %s (%s); `pip install matplotlib` to get it", CURVES_PNG, e)
            return None
        except Exception as e:  # noqa: BLE001 - a plot must never lose a finished training
            log.warning("could not write %s: %s: %s", CURVES_PNG, type(e).__name__, e)
            return None
        log.info("loss / accuracy curves: %s", path)
        return path

    def _take_signals(self) -> dict[int, Any]:
        """Ctrl-C and SIGTERM call :meth:`_on_signal` while training; returns the previous handlers
        (none when not on the main thread: the signals are then not ours to handle)."""
        old = {}
        for s in STOP_SIGNALS:
            try:
                old[s] = signal.signal(s, self._on_signal)
            except ValueError:
                break
        return old

    def done_line(self, seconds: float) -> str:
        """What this process did: epochs finished and iterations trained here (not those of the runs it
        resumed), where it started, the total, the best validation."""
        e0, i0, g0 = self.start
        ran = f"{self.epoch - e0} epochs ({self.iter - g0} iterations) in {seconds:.1f} s"
        if g0:
            ran += (f", resumed at epoch {e0 + 1} iteration {i0}/{self.ipe}; the model has trained {self.epoch} "
                    f"epochs ({self.iter} iterations) in all")
        best = (f"best val top-1 {self.best_top1:.2f}% (epoch {self.best_epoch})" if self.best_epoch
                else "no validation yet")
        return f"done: {ran}; {best}; checkpoints in {self.work_dir}"

    def summary(self, seconds: float, stopped: Optional[str]) -> dict[str, Any]:
        e0, _, g0 = self.start
        return dict(work_dir=str(self.work_dir), epochs=self.epoch, iters=self.iter, epochs_run=self.epoch - e0,
                    iters_run=self.iter - g0, stopped=stopped, history=self.history, best_top1=self.best_top1,
                    best_epoch=self.best_epoch, time_s=seconds, log=str(self.log_path), json_log=str(self.json_path))

    def run(self) -> dict[str, Any]:
        """Train (module docstring); the summary of this process's run (``epochs`` / ``iters``: the
        totals, ``epochs_run`` / ``iters_run``: this process's, ``stopped``: ``'max_iters'`` or None,
        ``history``: one dict per epoch finished here). :class:`Stopped` after a stop signal. The run's
        log handlers are released however it ends."""
        try:
            return self._run()
        finally:
            close_logging()

    def _run(self) -> dict[str, Any]:
        log.info("config %s (%s), work dir %s, device %s, world size %d, seed %d, amp %s",
                 self.cfg.name, self.cfg.filename, self.work_dir, self.device, self.dist.world, self.seed, self.amp_name or False)
        log.info("train: %d samples (%s), %d iters/epoch of %d; val: %s", len(self.train_set),
                 self.train_set.source, self.ipe, self.batch,
                 f"{len(self.val_set)} samples ({self.val_key})" if self.val_set is not None else "none")
        if self.max_iters is not None:
            log.info("--max-iters %d: stopping after global iteration %d (of %d in %d epochs)", self.max_iters,
                     self.max_iters, self.max_epochs * self.ipe, self.max_epochs)
        self.write_run_info()
        old = self._take_signals()
        t_start = time.perf_counter()
        stopped = None
        try:
            if self.val_pending:
                self.finish_epoch(None)
            while self.epoch < self.max_epochs and not self.iter_limit_reached():
                if self.stop_requested():
                    raise Interrupted
                train = self.train_epoch()
                self.scheduler.epoch_end()
                self.epoch += 1
                self.inner_iter = 0
                self.val_pending = self.val_set is not None and (self.epoch % self.eval_interval == 0
                                                                 or self.epoch == self.max_epochs)
                self.finish_epoch(train)
            if self.epoch < self.max_epochs:
                stopped = "max_iters"
                log.info("stopped after global iteration %d (--max-iters %d) at the end of epoch %d; latest.pth is "
                         "that epoch's; continue with --resume", self.iter, self.max_iters, self.epoch)
        except Interrupted:
            signum = self._stop
            stopped = signal.Signals(signum).name if signum else "max_iters"
            path = self.save("latest.pth", interrupted=bool(signum), stopped=stopped)
            where = (f"at epoch {self.epoch + 1} iteration {self.inner_iter}/{self.ipe} (global iteration {self.iter}"
                     f"{f'; epoch {self.epoch} validation pending' if self.val_pending else ''})")
            if signum:
                log.info("interrupted %s by %s: saved %s; continue with --resume", where, stopped, path)
            else:
                log.info("stopped %s: --max-iters %d reached; saved %s; continue with --resume", where,
                         self.max_iters, path)
            if signum:
                self.plot()
                log.info(self.done_line(time.perf_counter() - t_start))
                raise Stopped(signum) from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self.tb is not None:
                self.tb.close()
        total = time.perf_counter() - t_start
        self.plot()
        log.info(self.done_line(total))
        return self.summary(total, stopped)
