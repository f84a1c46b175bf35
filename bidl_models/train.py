"""Train a config's model: ``python -m bidl_models.train --config NAME_OR_PATH [options]``.

Options: ``--work-dir DIR`` (default ``work_dirs/<config name>``); ``--resume`` (continue from the work
dir's ``latest.pth``, or its newest ``epoch_N.pth``; ``--resume PATH``: from that file); ``--resume-from
CKPT`` (BIDL's flag: a path, or a file name in the work dir, e.g. ``latest.pth``; also the config's
``resume_from``); ``--load-from CKPT`` (weights only, for fine-tuning; also the config's ``load_from``);
``--cfg-options key.sub=value ...``, ``--seed``, ``--device``, ``--amp`` (mixed precision on CUDA; also the
config's ``fp16``), ``--threads``, ``--workers``, ``--no-progress``, ``--no-tensorboard``.
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
``state_dict`` keys are the classifier's (``backbone.*``). Ctrl-C lets the current iteration finish, saves
``latest.pth`` with the position inside the epoch (iterations done, the sampler's position, RNG states;
``meta.interrupted=True``) and exits with status 130; a second Ctrl-C quits at once without saving.
Resuming it continues exactly: the same learning rate at every iteration, the same batches and
augmentations (:mod:`bidl_models.sampler`) and, on CPU, bit-identical weights as an uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoint import checkpoint_format, load_weights, read_checkpoint, read_state_dict, strip_prefixes, to_project
from .classifier import ImageClassifier, build_classifier
from .config import Config, dump_config, load_config
from .datasets import BaseDataset, build_dataset
from .registry import check_kwargs
from .sampler import EpochSampler, SeededSamples, rng_state, set_rng_state
from .schedule import LrSchedule  # noqa: F401  (re-exported: bidl_models.train.LrSchedule)
from .train_log import LOSS, JsonLog, Meter, acc_key, env_info, plot_curves, text_line, train_record, val_record

OPTIMIZERS = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW,
              "RMSprop": torch.optim.RMSprop}
CURVES_PNG = "curves.png"
EPOCH_CKPT = re.compile(r"epoch_(\d+)\.pth")

log = logging.getLogger("bidl_models.train")


class Interrupted(Exception):
    """Raised inside the trainer when Ctrl-C asked it to stop (at an iteration boundary)."""


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


@dataclass(frozen=True)
class InputSpec:
    """What one sample's ``img`` must be for a model: ``[T, *step_shape]`` of ``kind`` ('float' or 'int')."""

    timestep: Optional[int]             # T the model needs (amode 'mean' divides by it), else None
    step_shape: Optional[tuple]         # per-step shape, e.g. (C, H, W) or () for one token per step
    kind: str                           # 'float' (frames, encodings) or 'int' (token ids)


def input_kind(backbone: nn.Module) -> str:
    """'int' or 'float': the backbone's ``input_dtype`` when it declares one, else 'int' for a model
    with an embedding (it reads token ids), else 'float'."""
    declared = getattr(backbone, "input_dtype", None)
    if declared is not None:
        dt = declared if isinstance(declared, torch.dtype) else getattr(torch, str(declared).removeprefix("torch."),
                                                                        None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"{type(backbone).__name__}.input_dtype={declared!r}: not a torch dtype name")
        return "float" if dt.is_floating_point else "int"
    if any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in backbone.modules()):
        return "int"
    return "float"


def model_input(model: ImageClassifier, cfg: Mapping[str, Any]) -> InputSpec:
    """The input the model declares: ``backbone.timestep`` (checked with amode 'mean'),
    ``backbone.input_shape`` (per step; for dense input ``models_compile_inputshape[0][1:]`` when the
    backbone gives none), ``backbone.input_dtype`` (see :func:`input_kind`)."""
    bb = model.backbone
    acc = getattr(bb, "acc", None)
    t = bb.timestep if acc is not None and getattr(acc, "amode", None) == "mean" else None
    kind = input_kind(bb)
    shape = getattr(bb, "input_shape", None)
    if callable(shape):
        shape = None
    shapes = cfg.get("models_compile_inputshape")
    if shape is None and shapes and kind == "float":
        shape = tuple(int(d) for d in shapes[0][1:])
    return InputSpec(t, None if shape is None else tuple(int(d) for d in shape), kind)


def check_input_shape(model: ImageClassifier, cfg: Mapping[str, Any], dataset: BaseDataset, key: str) -> None:
    """ValueError naming the config keys when the data's samples (shape, time steps, dtype) do not fit
    what the model declares (:func:`model_input`)."""
    if len(dataset) == 0:
        raise ValueError(f"{key}: the dataset {dataset.source!r} has no samples")
    img = torch.as_tensor(dataset[0]["img"])
    shape = tuple(int(d) for d in img.shape)
    dtype = str(img.dtype).removeprefix("torch.")
    spec = model_input(model, cfg)
    bbcfg = cfg["model"]["backbone"]
    bbname = bbcfg.get("type", type(model.backbone).__name__)
    step_names = {3: "C, H, W", 0: ""}.get(len(spec.step_shape or ()), ", ".join(
        f"d{i}" for i in range(len(spec.step_shape or ()))))
    if spec.step_shape is not None and len(shape) != 1 + len(spec.step_shape):
        want = f"[T{', ' + step_names if step_names else ''}]"
        raise ValueError(f"{key}: sample 0 of {dataset.source!r} has img shape {list(shape)}; expected {want} "
                         f"for model.backbone type={bbname!r} (check the pipeline)")
    if spec.step_shape is None and len(shape) < (2 if spec.kind == "float" else 1):
        raise ValueError(f"{key}: sample 0 of {dataset.source!r} has img shape {list(shape)}; expected [T, ...] "
                         "(check the pipeline)")
    if spec.kind == "int" and img.is_floating_point():
        raise ValueError(f"{key}: samples of {dataset.source!r} are {dtype} {list(shape)} but model.backbone "
                         f"type={bbname!r} reads integer token ids (an int64 [T] per sample); check the pipeline")
    if spec.kind == "float" and not img.is_floating_point():
        raise ValueError(f"{key}: samples of {dataset.source!r} are {dtype} {list(shape)} but model.backbone "
                         f"type={bbname!r} takes float input; add dict(type='ToTensorType', keys=['img'], "
                         "dtype='float32') to the pipeline")
    if spec.timestep is not None and shape[0] != spec.timestep:
        raise ValueError(f"{key}: samples of {dataset.source!r} have T={shape[0]} frames but "
                         f"model.backbone.timestep={bbcfg.get('timestep')} (amode='mean')")
    if spec.step_shape is not None and shape[1:] != spec.step_shape:
        keys = [k for k in ("c0", "h0", "w0", "input_channels", "h", "w") if k in bbcfg]
        given = ", ".join(f"{k}={bbcfg[k]}" for k in keys) or "defaults"
        raise ValueError(f"{key}: samples of {dataset.source!r} are [{step_names}]={list(shape[1:])} per step but "
                         f"the model expects {list(spec.step_shape)} (model.backbone {given}; "
                         f"models_compile_inputshape={cfg.get('models_compile_inputshape')})")
    shapes = cfg.get("models_compile_inputshape")
    if shapes and spec.kind == "float" and tuple(int(d) for d in shapes[0][1:]) != shape[1:]:
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


def dataset_defaults(data: Mapping[str, Any]) -> Optional[dict]:
    """``default_args`` of :func:`~bidl_models.datasets.build_dataset`: BIDL's ``data.data_root``, for the
    datasets that take a ``data_root`` (and whose config entry does not set its own)."""
    root = data.get("data_root")
    return {"data_root": root} if root is not None else None


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


def find_latest_checkpoint(work_dir: Path) -> Optional[Path]:
    """``latest.pth`` in ``work_dir``, else its ``epoch_N.pth`` with the largest N, else None."""
    latest = work_dir / "latest.pth"
    if latest.is_file():
        return latest
    epochs = [(int(m.group(1)), p) for p in work_dir.glob("epoch_*.pth") if (m := EPOCH_CKPT.fullmatch(p.name))]
    return max(epochs)[1] if epochs else None


def find_checkpoint(path: str | Path, work_dir: Path, key: str) -> Path:
    """``path`` as BIDL's ``--resume-from`` means it (a file name in the work dir) or as a path; a bare
    file name is looked for in ``work_dir`` first. FileNotFoundError naming where it looked."""
    p = Path(path)
    cands = [p] if p.is_absolute() else ([work_dir / p, p] if p.parent == Path(".") else [p, work_dir / p])
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{key} {str(path)!r}: no such checkpoint (looked for "
                            f"{[str(c) for c in dict.fromkeys(cands)]})")


def ignore_sigint(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C (sent by a terminal to the whole process group) to the trainer, which
    finishes the iteration and saves; they end with the loader."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def link_or_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` the same file as ``src`` (hard link, else a copy), replacing it atomically."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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
            progress: bool = False, desc: str = "eval",
            stop: Optional[Callable[[], bool]] = None) -> tuple[torch.Tensor, float]:
    """(logits ``[N, nclass]`` in loader order on CPU, seconds spent in the model); :class:`Interrupted`
    when ``stop()`` turns true between batches."""
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
        if stop is not None and stop():
            raise Interrupted
    return (torch.cat(outs) if outs else torch.zeros(0, 0)), model_s


def evaluate_logits(model: ImageClassifier, dataset: BaseDataset, logits: torch.Tensor,
                    indices: Sequence[int]) -> dict[str, float]:
    """``{'accuracy_top-k': percent, ..., 'loss': ..}`` of ``logits`` for ``dataset``'s samples ``indices``:
    the metrics (and names) of the val log lines and of the test CLI."""
    indices = np.asarray(indices, dtype=np.int64)
    res = dataset.evaluate(logits, metric_options={"topk": tuple(model.head.topk)}, indices=indices)
    labels = torch.as_tensor(dataset.get_gt_labels()[indices])
    res[LOSS] = float(model.head.compute_loss(logits, labels))
    return res


# ---------------------------------------------------------------------------------------- trainer

IterCallback = Callable[["Trainer", dict], None]


class Trainer:
    """One training run (built from a loaded config and the CLI arguments). ``callbacks`` are called
    after every iteration with ``dict(iter, lr, loss)`` (``iter``: the 0-based global iteration just done)."""

    def __init__(self, cfg: Config, args: argparse.Namespace, callbacks: Sequence[IterCallback] = ()):
        self.cfg, self.args, self.callbacks = cfg, args, list(callbacks)
        self.dist = DistInfo()
        self.device = resolve_device(args.device, self.dist.local_rank)
        self.dist.init(self.device)
        self.rank0 = self.dist.rank == 0
        self.work_dir = Path(args.work_dir or cfg.get("work_dir") or Path("work_dirs") / cfg.name)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        stamp = base = time.strftime("%Y%m%d_%H%M%S")
        while any((self.work_dir / f"{stamp}{ext}").exists() for ext in (".log", ".log.json")):
            stamp = f"{base}_{int(stamp[len(base) + 1:] or 0) + 1}"      # a second run in the same second
        self.log_path = setup_logging(self.work_dir, stamp, self.dist.rank)
        self.json_path = self.work_dir / f"{stamp}.log.json"
        self.json = JsonLog(self.json_path, enabled=self.rank0)
        self.resume_path = self.resume_source(args, cfg)
        resumed = load_checkpoint(self.resume_path) if self.resume_path else None
        ck_seed = ((resumed or {}).get("meta") or {}).get("seed")
        self.seed = int(args.seed if args.seed is not None else ck_seed if ck_seed is not None
                        else cfg.get("seed", 0) or 0)
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
        self.train_set = build_dataset(data["train"].to_dict(), dataset_defaults(data), where="data.train")
        val_key = "val" if "val" in data else "test" if "test" in data else None
        self.val_key = f"data.{val_key}" if val_key else None
        self.val_set = (build_dataset(data[val_key].to_dict(), dataset_defaults(data), where=self.val_key)
                        if val_key else None)
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
        self.sampler = EpochSampler(len(self.train_set), self.seed, True, self.dist.rank, self.dist.world)
        self.train_loader = torch.utils.data.DataLoader(
            SeededSamples(self.train_set, self.seed), batch_size=self.batch, sampler=self.sampler,
            num_workers=self.workers, pin_memory=self.device.type == "cuda", drop_last=False,
            persistent_workers=self.workers > 0, worker_init_fn=ignore_sigint,
            generator=torch.Generator().manual_seed(self.seed))    # its base seed must not draw from torch's RNG
        self.ipe = math.ceil(self.sampler.per_rank / self.batch)        # iterations in a whole epoch
        self.val_loader: Optional[torch.utils.data.DataLoader] = None
        self.val_indices = np.zeros(0, np.int64)
        self.max_epochs = int(cfg.get("runner", {}).get("max_epochs", 1))
        self.optimizer = build_optimizer(self.model, cfg.optimizer.to_dict())
        self.scheduler = LrSchedule(self.optimizer, cfg.get("lr_config", {}), self.ipe, self.max_epochs,
                                    warmup=cfg.get("warmup"))
        scale = {"init_scale": self.loss_scale} if self.loss_scale else {}
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp, **scale)
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
        self._stop = False
        self._iter_time = (0.0, 0)                          # (seconds, iterations) timed in this run, for the ETA
        if resumed is not None:
            self.resume(resumed, self.resume_path)
        self.tb = tensorboard_writer(self.work_dir / "tf_logs") if (self.rank0 and not args.no_tensorboard) else None

    # ----------------------------------------------------------------- resuming
    def resume_source(self, args: argparse.Namespace, cfg: Mapping[str, Any]) -> Optional[Path]:
        """The checkpoint to resume: ``--resume`` (the work dir's latest, or a path), ``--resume-from``,
        or the config's ``resume_from``; None to start afresh."""
        resume = getattr(args, "resume", None)
        if resume and args.resume_from:
            raise ValueError(f"--resume {resume if resume != 'auto' else ''} and --resume-from {args.resume_from}: "
                             "give one of them")
        if resume == "auto":
            found = find_latest_checkpoint(self.work_dir)
            if found is None:
                log.info("--resume: no latest.pth or epoch_N.pth in %s: training from scratch", self.work_dir)
            return found
        if resume:
            return find_checkpoint(resume, self.work_dir, "--resume")
        if args.resume_from:
            return find_checkpoint(args.resume_from, self.work_dir, "--resume-from")
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
        if self.amp and "scaler" in ck:
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
                   rng: Optional[list] = None) -> dict:
        meta = dict(config_name=self.cfg.name, epoch=self.epoch, iter=self.iter, best_top1=self.best_top1,
                    best_epoch=self.best_epoch, seed=self.seed, interrupted=interrupted, val_pending=self.val_pending,
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
        if self.amp:
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
    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._stop:
            raise KeyboardInterrupt
        self._stop = True
        try:
            os.write(2, b"\nCtrl-C: finishing this iteration, then saving latest.pth "
                        b"(Ctrl-C again quits without saving)\n")
        except OSError:
            pass

    def stop_requested(self) -> bool:
        """Whether Ctrl-C asked to stop (on any rank: every rank must call it at the same point)."""
        if not self.dist.enabled:
            return self._stop
        t = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        self._stop = bool(t.item() > 0)
        return self._stop

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
        after the iteration during which Ctrl-C came."""
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
                   disable=not (self.rank0 and not self.args.no_progress), dynamic_ncols=True)
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
                with torch.autocast(self.device.type, enabled=self.amp):
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
                stopping = not last and self.stop_requested()
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
        """Metrics of the validation set (:func:`evaluate_logits`); :class:`Interrupted` on Ctrl-C."""
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
                            self.args.no_progress, desc="val", stop=self.stop_requested)
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

    def run(self) -> dict[str, Any]:
        log.info("config %s (%s), work dir %s, device %s, world size %d, seed %d, amp %s",
                 self.cfg.name, self.cfg.filename, self.work_dir, self.device, self.dist.world, self.seed, self.amp)
        log.info("train: %d samples (%s), %d iters/epoch of %d; val: %s", len(self.train_set),
                 self.train_set.source, self.ipe, self.batch,
                 f"{len(self.val_set)} samples ({self.val_key})" if self.val_set is not None else "none")
        self.write_run_info()
        try:
            old = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:                              # not the main thread: Ctrl-C is not ours to handle
            old = None
        t_start = time.perf_counter()
        try:
            if self.val_pending:
                self.finish_epoch(None)
            while self.epoch < self.max_epochs:
                if self.stop_requested():
                    raise Interrupted
                train = self.train_epoch()
                self.scheduler.epoch_end()
                self.epoch += 1
                self.inner_iter = 0
                self.val_pending = self.val_set is not None and (self.epoch % self.eval_interval == 0
                                                                 or self.epoch == self.max_epochs)
                self.finish_epoch(train)
        except Interrupted:
            path = self.save("latest.pth", interrupted=True)
            log.info("interrupted at epoch %d iteration %d/%d (global iteration %d%s): saved %s; continue with "
                     "--resume", self.epoch + 1, self.inner_iter, self.ipe, self.iter,
                     f"; epoch {self.epoch}'s validation pending" if self.val_pending else "", path)
            self.plot()
            raise KeyboardInterrupt from None
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
            if self.tb is not None:
                self.tb.close()
        total = time.perf_counter() - t_start
        self.plot()
        log.info("done: %d epochs in %.1f s; best val top-1 %.2f%% (epoch %d); checkpoints in %s",
                 self.epoch, total, self.best_top1, self.best_epoch, self.work_dir)
        return dict(work_dir=str(self.work_dir), epochs=self.epoch, history=self.history, best_top1=self.best_top1,
                    best_epoch=self.best_epoch, time_s=total, log=str(self.log_path), json_log=str(self.json_path))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bidl_models.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="config file, or a config name (stem) under --config-root, "
                   "$BIDL_CONFIG_ROOT or configs/")
    p.add_argument("--config-root", action="append", default=None, metavar="DIR",
                   help="directory searched for a bare config name (e.g. a BIDL checkout); repeatable")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH",
                   help="resume training: from the work dir's latest checkpoint, or from PATH (model, optimizer, "
                        "scheduler, epoch and, after Ctrl-C, the position inside the epoch)")
    p.add_argument("--resume-from", help="BIDL's flag: checkpoint to resume, a path or a file name in the work dir")
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


def main(argv: Optional[Sequence[str]] = None, callbacks: Sequence[IterCallback] = ()) -> dict[str, Any]:
    """The CLI; returns the run's summary (``history``: one dict per epoch with ``train`` / ``val`` metrics)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options, args.config_root)
    trainer = Trainer(cfg, args, callbacks)
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
