"""Train a config's model: ``python -m bidl_models.train --config NAME_OR_PATH [options]``.

Options: ``--work-dir DIR`` (default ``work_dirs/<config name>``), ``--resume-from CKPT`` (continue
model, optimizer, scheduler and the epoch count), ``--load-from CKPT`` (weights only, for fine-tuning;
also the config's ``load_from``), ``--cfg-options key.sub=value ...``, ``--seed``, ``--device``,
``--amp`` (mixed precision on CUDA; also the config's ``fp16``), ``--threads``, ``--no-progress``.
Multi-GPU: ``torchrun --nproc_per_node N -m bidl_models.train --config ...`` (DDP; rank 0 writes).

The config supplies ``model``, ``data`` (``samples_per_gpu``, ``workers_per_gpu``, ``train``,
``val`` or ``test``), ``optimizer`` (SGD, Adam, AdamW, RMSprop), ``optimizer_config.grad_clip``,
``lr_config`` (mmcv's CosineAnnealing / step / fixed, or a torch scheduler class name with its
arguments: see :mod:`bidl_models.schedule`), BIDL's top-level ``warmup``, ``fp16=dict(loss_scale)``,
``runner.max_epochs``, ``checkpoint_config.interval``, ``evaluation.interval``, ``log_config.interval``.
Keys BIDL ignores (``runner.type``, ``log_config.hooks``, ``dist_params``, ``workflow``, other
``checkpoint_config`` keys) are ignored here too. ``--resume-from`` and ``--load-from`` take BIDL's
``tools/train.py`` checkpoints as well as this project's (see :mod:`bidl_models.checkpoint`).

Written to the work dir: ``latest.pth`` (every ``checkpoint_config.interval`` epochs and at the end),
``best.pth`` (best validation top-1), ``<time>.log`` (text log), ``<time>.log.json`` (one JSON line per
epoch), ``tf_logs/`` (TensorBoard scalars, when the ``tensorboard`` package is installed).
A checkpoint is ``dict(state_dict, optimizer, scheduler, epoch, config, meta)``; ``state_dict`` keys
are the classifier's (``backbone.*``). Ctrl-C saves ``latest.pth`` (meta ``interrupted=True``, epoch =
completed epochs, weights as trained so far) and exits with status 130.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import checkpoint_format, load_weights, read_checkpoint, read_state_dict, strip_prefixes, to_project
from .classifier import ImageClassifier, build_classifier
from .config import Config, load_config
from .datasets import BaseDataset, build_dataset
from .registry import check_kwargs
from .schedule import LrSchedule  # noqa: F401  (re-exported: bidl_models.train.LrSchedule)

OPTIMIZERS = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
              "RMSprop": torch.optim.RMSprop}

log = logging.getLogger("bidl_models.train")


# ---------------------------------------------------------------------------------------- helpers

def resolve_device(name: Optional[str] = None, local_rank: int = 0) -> torch.device:
    """'auto' / None: CUDA if available else CPU; 'cuda' means this process's local GPU."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name != "cpu":
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def expected_input(model: ImageClassifier, cfg: Mapping[str, Any]) -> tuple[Optional[int], Optional[tuple]]:
    """(timestep the model needs or None, per-step (C, H, W) or None) from the model and config."""
    bb = model.backbone
    t = bb.timestep if getattr(bb, "acc", None) is not None and bb.acc.amode == "mean" else None
    chw = getattr(bb, "input_shape", None)
    shapes = cfg.get("models_compile_inputshape")
    if chw is None and shapes:
        chw = tuple(int(d) for d in shapes[0][1:])
    return t, (tuple(chw) if chw else None)


def check_input_shape(model: ImageClassifier, cfg: Mapping[str, Any], dataset: BaseDataset, key: str) -> None:
    """ValueError naming the config keys when the data's sample shape does not fit the model."""
    if len(dataset) == 0:
        raise ValueError(f"{key}: the dataset {dataset.source!r} has no samples")
    img = dataset[0]["img"]
    shape = tuple(int(d) for d in img.shape)
    if len(shape) != 4:
        raise ValueError(f"{key}: sample 0 of {dataset.source!r} has img shape {list(shape)}; expected "
                         "[T, C, H, W] (check the pipeline)")
    t, chw = expected_input(model, cfg)
    bbcfg = cfg["model"]["backbone"]
    if t is not None and shape[0] != t:
        raise ValueError(f"{key}: samples of {dataset.source!r} have T={shape[0]} frames but "
                         f"model.backbone.timestep={bbcfg.get('timestep')} (amode='mean')")
    if chw is not None and shape[1:] != chw:
        keys = [k for k in ("c0", "h0", "w0", "input_channels", "h", "w") if k in bbcfg]
        given = ", ".join(f"{k}={bbcfg[k]}" for k in keys) or "defaults"
        raise ValueError(f"{key}: samples of {dataset.source!r} are [C, H, W]={list(shape[1:])} per step but the "
                         f"model expects {list(chw)} (model.backbone {given}; models_compile_inputshape="
                         f"{cfg.get('models_compile_inputshape')})")
    shapes = cfg.get("models_compile_inputshape")
    if shapes and tuple(int(d) for d in shapes[0][1:]) != shape[1:]:
        raise ValueError(f"models_compile_inputshape[0]={list(shapes[0])} does not match the data's per-step "
                         f"input [1, {', '.join(map(str, shape[1:]))}] ({key}: {dataset.source!r})")


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


def save_checkpoint(path: Path, obj: Mapping[str, Any]) -> None:
    """Atomic ``torch.save`` (a crash or Ctrl-C mid-write never leaves a half file)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(obj), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint in the project's form (``weights_only``: it cannot run code); BIDL's
    ``tools/train.py`` checkpoints are converted (:func:`bidl_models.checkpoint.to_project`)."""
    ck = read_checkpoint(path)
    if not isinstance(ck, Mapping) or "state_dict" not in ck:
        raise ValueError(f"checkpoint {str(path)!r}: not a training checkpoint (no 'state_dict' key)")
    return to_project(ck, where=str(path)) if checkpoint_format(ck) == "bidl" else dict(ck)


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


def make_loader(dataset: BaseDataset, batch_size: int, workers: int, shuffle: bool, seed: int = 0,
                sampler: Any = None, pin: bool = False) -> torch.utils.data.DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, pin_memory=pin, drop_last=False, generator=g,
        persistent_workers=workers > 0)


def tensorboard_writer(logdir: Path) -> Any:
    """A SummaryWriter, or None (with a log line) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # noqa: BLE001 - tensorboard is optional
        log.info("TensorBoard scalars disabled (%s: %s); `pip install tensorboard` to enable",
                 type(e).__name__, e)
        return None
    return SummaryWriter(str(logdir))


def setup_logging(work_dir: Path, stamp: str, rank: int) -> Path:
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    path = work_dir / f"{stamp}.log"
    if rank == 0:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        fh = logging.FileHandler(path)
        fh.setFormatter(fmt)
        sh = logging.StreamHandler(sys.stdout)
        sh.setFormatter(fmt)
        log.addHandler(fh)
        log.addHandler(sh)
    else:
        log.addHandler(logging.NullHandler())
    return path


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


@torch.no_grad()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, amp: bool = False,
            progress: bool = False, desc: str = "eval") -> tuple[torch.Tensor, float]:
    """(logits ``[N, nclass]`` in loader order on CPU, seconds spent in the model)."""
    from tqdm import tqdm
    model.eval()
    outs, model_s = [], 0.0
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        img = batch["img"].to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            logits = model(img)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        model_s += time.perf_counter() - t0
        outs.append(logits.float().cpu())
    return (torch.cat(outs) if outs else torch.zeros(0, 0)), model_s


# ---------------------------------------------------------------------------------------- trainer

class Trainer:
    """One training run (built from a loaded config and the CLI arguments)."""

    def __init__(self, cfg: Config, args: argparse.Namespace):
        self.cfg, self.args = cfg, args
        self.dist = DistInfo()
        self.device = resolve_device(args.device, self.dist.local_rank)
        self.dist.init(self.device)
        self.rank0 = self.dist.rank == 0
        self.work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / cfg.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        self.log_path = setup_logging(self.work_dir, stamp, self.dist.rank)
        self.json_path = self.work_dir / f"{stamp}.log.json"
        self.seed = int(args.seed if args.seed is not None else cfg.get("seed", 0) or 0)
        random.seed(self.seed + self.dist.rank)
        np.random.seed(self.seed + self.dist.rank)
        torch.manual_seed(self.seed + self.dist.rank)
        self.loss_scale = fp16_loss_scale(cfg.get("fp16"))
        self.amp = bool(args.amp or cfg.get("fp16")) and self.device.type == "cuda"
        if (args.amp or cfg.get("fp16")) and self.device.type != "cuda":
            log.info("AMP requested but the device is %s: training in fp32", self.device)

        data = cfg.get("data")
        if not isinstance(data, Mapping) or "train" not in data:
            raise ValueError("config: missing data.train")
        check_sections(cfg)
        self.batch = int(data.get("samples_per_gpu", 16))
        self.workers = int(data.get("workers_per_gpu", 0) if args.workers is None else args.workers)
        self.model = build_classifier(cfg.model.to_dict(), seed=self.seed).to(self.device)
        self.train_set = build_dataset(data["train"].to_dict(), where="data.train")
        val_key = "val" if "val" in data else "test" if "test" in data else None
        self.val_key = f"data.{val_key}" if val_key else None
        self.val_set = build_dataset(data[val_key].to_dict(), where=self.val_key) if val_key else None
        check_input_shape(self.model, cfg, self.train_set, "data.train")
        if self.val_set is not None:
            check_input_shape(self.model, cfg, self.val_set, self.val_key)

        load_from = args.load_from or cfg.get("load_from")
        if load_from:
            load_weights(self.model.backbone, read_state_dict(load_from), f"load_from {str(load_from)!r}")
            log.info("loaded weights from %s", load_from)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        sampler = (torch.utils.data.distributed.DistributedSampler(self.train_set, shuffle=True, seed=self.seed)
                   if self.dist.enabled else None)
        self.val_loader: Optional[torch.utils.data.DataLoader] = None
        self.val_indices = np.zeros(0, np.int64)
        self.train_loader = make_loader(self.train_set, self.batch, self.workers, True, self.seed, sampler,
                                        pin=self.device.type == "cuda")
        self.max_epochs = int(cfg.get("runner", {}).get("max_epochs", 1))
        self.optimizer = build_optimizer(self.model, cfg.optimizer.to_dict())
        self.scheduler = LrSchedule(self.optimizer, cfg.get("lr_config", {}), len(self.train_loader),
                                    self.max_epochs, warmup=cfg.get("warmup"))
        scale = {"init_scale": self.loss_scale} if self.loss_scale else {}
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp, **scale)
        gc = (cfg.get("optimizer_config") or {}).get("grad_clip")
        self.grad_clip = dict(gc) if gc else None
        self.ckpt_interval = int((cfg.get("checkpoint_config") or {}).get("interval", 1))
        self.eval_interval = int((cfg.get("evaluation") or {}).get("interval", 1))
        self.log_interval = int((cfg.get("log_config") or {}).get("interval", 50))
        self.epoch, self.iter, self.best_top1, self.best_epoch = 0, 0, -1.0, 0
        resume = args.resume_from or cfg.get("resume_from")
        if resume:
            self.resume(resume)
        self.tb = tensorboard_writer(self.work_dir / "tf_logs") if (self.rank0 and not args.no_tensorboard) else None

    # ----------------------------------------------------------------- checkpoints
    def checkpoint(self, interrupted: bool = False, val: Optional[Mapping[str, float]] = None) -> dict:
        meta = dict(config_name=self.cfg.name, epoch=self.epoch, iter=self.iter, best_top1=self.best_top1,
                    best_epoch=self.best_epoch, seed=self.seed, interrupted=interrupted,
                    torch=str(torch.__version__), time=time.strftime("%Y-%m-%d %H:%M:%S"))
        if val:
            meta["val"] = dict(val)
        ck = dict(state_dict=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                  scheduler=self.scheduler.state_dict(), epoch=self.epoch, config=self.cfg.to_dict(), meta=meta)
        if self.amp:
            ck["scaler"] = self.scaler.state_dict()
        return ck

    def resume(self, path: str | Path) -> None:
        """Continue from a checkpoint of this project or of BIDL's ``tools/train.py``."""
        ck = load_checkpoint(path)
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
        self.iter = int(meta.get("iter", self.epoch * len(self.train_loader)))
        # mmcv policies are closed forms of the iteration; a torch scheduler needs its saved state
        self.scheduler.load_state_dict(ck.get("scheduler") or {}, fallback_iter=self.iter)
        if self.amp and "scaler" in ck:
            self.scaler.load_state_dict(ck["scaler"])
        self.best_top1 = float(meta.get("best_top1", -1.0))
        self.best_epoch = int(meta.get("best_epoch", 0))
        log.info("resumed from %s at epoch %d (iter %d)", path, self.epoch, self.iter)

    def save(self, name: str, **kw: Any) -> None:
        if self.rank0:
            save_checkpoint(self.work_dir / name, self.checkpoint(**kw))

    # ----------------------------------------------------------------- loops
    def train_epoch(self) -> dict[str, float]:
        from tqdm import tqdm
        self.net.train()
        if isinstance(self.train_loader.sampler, torch.utils.data.distributed.DistributedSampler):
            self.train_loader.sampler.set_epoch(self.epoch)
        # per-epoch seeds: a resumed run draws the same data order, crops and noise as an uninterrupted one
        self.train_loader.generator.manual_seed(self.seed * 1000 + self.epoch)
        np.random.seed([self.seed, self.epoch, self.dist.rank])
        torch.manual_seed(self.seed * 1_000_003 + self.epoch * 1009 + self.dist.rank)
        tot_loss, tot_correct, n, t0 = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{self.max_epochs}",
                   disable=not (self.rank0 and not self.args.no_progress), dynamic_ncols=True)
        for i, batch in enumerate(bar):
            img = batch["img"].to(self.device, non_blocking=True)
            label = batch["gt_label"].to(self.device, non_blocking=True).long().view(-1)
            lr = self.scheduler.apply(self.iter)
            with torch.autocast(self.device.type, enabled=self.amp):
                logits = self.net(img)
            loss = self.model.head.compute_loss(logits.float(), label)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {self.epoch + 1} iter {i}; "
                                         "lower optimizer.lr or set optimizer_config.grad_clip")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), **self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.iter += 1
            b = label.numel()
            tot_loss += loss.item() * b
            tot_correct += int((logits.detach().argmax(1) == label).sum())
            n += b
            bar.set_postfix(loss=f"{tot_loss / n:.4f}", lr=f"{lr:.2e}")
            if self.rank0 and self.tb is not None:
                self.tb.add_scalar("iter/loss", loss.item(), self.iter)
                self.tb.add_scalar("iter/lr", lr, self.iter)
            if self.log_interval and (i + 1) % self.log_interval == 0:
                log.info("epoch %d iter %d/%d lr %.3e loss %.4f", self.epoch + 1, i + 1, len(self.train_loader),
                         lr, tot_loss / n)
        bar.close()
        stats = torch.tensor([tot_loss, float(tot_correct), float(n)], dtype=torch.float64)
        if self.dist.enabled:
            stats = stats.to(self.device)
            torch.distributed.all_reduce(stats)
            stats = stats.cpu()
        dt = time.perf_counter() - t0
        return dict(loss=stats[0].item() / max(stats[2].item(), 1), accuracy_top1=100 * stats[1].item() /
                    max(stats[2].item(), 1), lr=self.optimizer.param_groups[0]["lr"], time_s=dt)

    def validate(self) -> dict[str, float]:
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
        logits, _ = predict(self.model, self.val_loader, self.device, self.amp, progress=self.rank0 and not
                            self.args.no_progress, desc="val")
        if self.dist.enabled:
            parts: list = [None] * self.dist.world
            torch.distributed.all_gather_object(parts, (indices, logits))
            order = {}
            for idx, lg in parts:
                for j, k in enumerate(idx):
                    order[int(k)] = lg[j]
            indices = np.arange(len(ds))
            logits = torch.stack([order[int(k)] for k in indices])
        labels = torch.as_tensor(ds.get_gt_labels()[indices])
        res = ds.evaluate(logits, metric_options={"topk": tuple(self.model.head.topk)}, indices=indices)
        res["loss"] = float(self.model.head.compute_loss(logits, labels))
        return res

    def run(self) -> dict[str, Any]:
        log.info("config %s (%s), work dir %s, device %s, world size %d, seed %d, amp %s",
                 self.cfg.name, self.cfg.filename, self.work_dir, self.device, self.dist.world, self.seed, self.amp)
        log.info("train: %d samples (%s), %d iters/epoch of %d; val: %s", len(self.train_set),
                 self.train_set.source, len(self.train_loader), self.batch,
                 f"{len(self.val_set)} samples ({self.val_key})" if self.val_set is not None else "none")
        history = []
        interrupted = {"flag": False}

        def on_sigint(signum: int, frame: Any) -> None:
            interrupted["flag"] = True
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGINT, on_sigint) if self.rank0 else None
        t_start = time.perf_counter()
        try:
            while self.epoch < self.max_epochs:
                tr = self.train_epoch()
                self.scheduler.epoch_end()
                self.epoch += 1
                rec: dict[str, Any] = dict(epoch=self.epoch, iter=self.iter, **{f"train_{k}": v for k, v in tr.items()})
                val = None
                if self.val_set is not None and (self.epoch % self.eval_interval == 0 or self.epoch == self.max_epochs):
                    val = self.validate()
                    rec.update({f"val_{k}": v for k, v in val.items()})
                    if val["accuracy_top-1"] > self.best_top1:
                        self.best_top1, self.best_epoch = val["accuracy_top-1"], self.epoch
                        self.save("best.pth", val=val)
                if self.epoch % self.ckpt_interval == 0 or self.epoch == self.max_epochs:
                    self.save("latest.pth", val=val)
                history.append(rec)
                log.info("epoch %d/%d: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in rec.items() if k != "epoch"),
                         self.epoch, self.max_epochs)
                if self.rank0:
                    with open(self.json_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if self.tb is not None:
                        for k, v in rec.items():
                            if isinstance(v, float):
                                self.tb.add_scalar(k.replace("_", "/", 1), v, self.epoch)
                        self.tb.flush()
        except (KeyboardInterrupt, RuntimeError) as e:
            if not (isinstance(e, KeyboardInterrupt) or interrupted["flag"]):
                raise
            self.save("latest.pth", interrupted=True)
            log.info("interrupted at epoch %d iter %d: saved %s (resume with --resume-from)",
                     self.epoch + 1, self.iter, self.work_dir / "latest.pth")
            raise KeyboardInterrupt from None
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            if self.tb is not None:
                self.tb.close()
        total = time.perf_counter() - t_start
        log.info("done: %d epochs in %.1f s; best val top-1 %.2f%% (epoch %d); checkpoints in %s",
                 self.epoch, total, self.best_top1, self.best_epoch, self.work_dir)
        return dict(work_dir=str(self.work_dir), epochs=self.epoch, history=history, best_top1=self.best_top1,
                    best_epoch=self.best_epoch, time_s=total, log=str(self.log_path))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bidl_models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config file, or a config name (stem) under --config-root, "
                   "$BIDL_CONFIG_ROOT or configs/")
    p.add_argument("--config-root", action="append", default=None, metavar="DIR",
                   help="directory searched for a bare config name (e.g. a BIDL checkout); repeatable")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    p.add_argument("--resume-from", help="checkpoint to resume (model, optimizer, scheduler, epoch)")
    p.add_argument("--load-from", help="weights to start from (fine-tuning); overrides the config's load_from")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--seed", type=int, default=None, help="seed of weights, data order, augmentation (default 0)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default data.workers_per_gpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard scalars")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options, args.config_root)
    trainer = Trainer(cfg, args)
    try:
        return trainer.run()
    finally:
        if trainer.dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
