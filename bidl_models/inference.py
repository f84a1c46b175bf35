"""Running a classifier over a dataset, shared by training's validation and the test CLI: the device,
mixed precision, the loader, the logits of every sample and their metrics."""
from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .classifier import ImageClassifier
from .datasets import BaseDataset
from .train_log import LOSS

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM, ``--max-iters``) and is taken at an iteration boundary."""


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


def amp_dtype(amp: Any, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` on ``device``: ``'bf16'`` anywhere (CPU autocast has it),
    ``'fp16'`` (or ``True``, BIDL's ``fp16`` key) on CUDA only; None: fp32. ValueError otherwise."""
    if not amp:
        return None
    name = "fp16" if amp is True else amp
    if name not in AMP_DTYPES:
        raise ValueError(f"--amp {amp!r}: expected one of {list(AMP_DTYPES)}")
    if name == "fp16" and device.type != "cuda":
        return None
    return AMP_DTYPES[name]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C and SIGTERM (sent to the whole process group by a terminal or a
    batch scheduler) to the main process, which stops at an iteration boundary; they end with the loader."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def make_loader(dataset: BaseDataset, batch_size: int, workers: int, shuffle: bool, seed: int = 0,
                sampler: Any = None, pin: bool = False) -> torch.utils.data.DataLoader:
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, pin_memory=pin, drop_last=False, generator=g,
        persistent_workers=workers > 0, worker_init_fn=ignore_stop_signals if workers else None,
        multiprocessing_context=worker_context(workers))


@torch.no_grad()
def predict(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device, amp: bool | str = False,
            progress: bool = False, desc: str = "eval",
            stop: Optional[Callable[[], bool]] = None) -> tuple[torch.Tensor, float]:
    """(logits ``[N, nclass]`` in loader order on CPU, seconds spent in the model); :class:`Interrupted`
    when ``stop()`` turns true between batches."""
    from tqdm import tqdm
    model.eval()
    dtype = amp_dtype(amp, device)
    outs, model_s = [], 0.0
    with _lines_above_bar(progress):
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
            model_s += _predict_batch(model, batch, device, dtype, outs)
            if stop is not None and stop():
                raise Interrupted
    return (torch.cat(outs) if outs else torch.zeros(0, 0)), model_s


def _lines_above_bar(progress: bool):
    """While a progress bar is open: the ``bidl_models`` loggers' console lines (e.g. the warning about
    an input of another T than ``timestep``) printed through ``tqdm.write``, above the bar."""
    if not progress:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm
    return logging_redirect_tqdm(loggers=[logging.getLogger("bidl_models")])


def _predict_batch(model: nn.Module, batch: dict, device: torch.device, dtype: Optional[torch.dtype],
                   outs: list) -> float:
    """Run one batch, append its logits to ``outs``; the seconds spent in the model."""
    img = batch["img"].to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(img)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    outs.append(logits.float().cpu())
    return seconds


def evaluate_logits(model: ImageClassifier, dataset: BaseDataset, logits: torch.Tensor,
                    indices: Sequence[int]) -> dict[str, float]:
    """``{'accuracy_top-k': percent, ..., 'loss': ..}`` of ``logits`` for ``dataset``'s samples ``indices``:
    the metrics (and names) of the val log lines and of the test CLI."""
    indices = np.asarray(indices, dtype=np.int64)
    res = dataset.evaluate(logits, metric_options={"topk": tuple(model.head.topk)}, indices=indices)
    labels = torch.as_tensor(dataset.get_gt_labels()[indices])
    res[LOSS] = float(model.head.compute_loss(logits, labels))
    return res


def worker_context(workers: int) -> Optional[str]:
    """How DataLoader workers start: forked (as BIDL's), except in a process that has loaded Ray, whose
    gRPC threads make a forked child abort: then from a fork server (a clean process)."""
    return "forkserver" if workers > 0 and "ray" in sys.modules else None
