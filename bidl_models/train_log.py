"""Training logs in mmcv's formats, and the loss/accuracy plot.

One metric naming scheme everywhere (train and val log lines, TensorBoard, the test CLI): ``loss``,
``accuracy_top-1``, ``accuracy_top-5`` (mmcls's evaluation names), ``lr``.

``<time>.log.json`` is mmcv's ``TextLoggerHook`` json log: one JSON object per line, the first one the
run's information (``env_info``, ``config``, ``seed``, ``exp_name``, ...; no ``epoch`` key, so
mmcls's ``analyze_logs.py`` skips it), then for every ``log_config.interval`` iterations (and the
last one of an epoch)::

    {"mode": "train", "epoch": e, "iter": i, "lr": .., "time": .., "data_time": .., "loss": ..,
     "accuracy_top-1": .., "accuracy_top-5": ..}

with ``e`` the 1-based epoch, ``i`` the 1-based iteration inside it, ``time`` / ``data_time`` seconds
per iteration (all of it / waiting for data) and the metrics averaged over the samples of those
iterations (``memory``, MB, on CUDA); after each validation
``{"mode": "val", "epoch": e, "iter": <val batches>, "lr": .., "accuracy_top-1": .., ...}``.
Floats are rounded to 5 decimals, as mmcv does. The text log has mmcv's lines:
``Epoch [e][i/N]\\tlr: .., eta: .., time: .., data_time: .., loss: .., ...`` and ``Epoch(val) [e][n]\\t...``.
"""
from __future__ import annotations

import datetime
import json
import platform
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

#: the keys every train/val log line and the test CLI use for the metrics
LOSS, LR = "loss", "lr"


def acc_key(k: int) -> str:
    """``accuracy_top-k``: mmcls's name, used in every log, TensorBoard tag and the test CLI's output."""
    return f"accuracy_top-{int(k)}"


class Meter:
    """Sample-weighted sums of loss and top-k hits, and time sums, over some iterations."""

    def __init__(self, topk: Sequence[int]):
        self.topk = tuple(topk)
        self.reset()

    def reset(self) -> None:
        self.loss = 0.0
        self.correct = {k: 0 for k in self.topk}
        self.n = self.iters = 0
        self.time = self.data_time = 0.0

    def update(self, loss: float, correct: Mapping[int, int], n: int, time_s: float, data_s: float) -> None:
        self.loss += float(loss) * n
        for k in self.topk:
            self.correct[k] += int(correct[k])
        self.n += int(n)
        self.iters += 1
        self.time += time_s
        self.data_time += data_s

    def metrics(self) -> dict[str, float]:
        """``{'loss': .., 'accuracy_top-k': percent, ...}`` (sample means)."""
        n = max(self.n, 1)
        return {LOSS: self.loss / n, **{acc_key(k): 100.0 * self.correct[k] / n for k in self.topk}}

    def reduce(self, dist_enabled: bool, device: torch.device) -> None:
        """Sum the counts over DDP ranks (in place)."""
        if not dist_enabled:
            return
        t = torch.tensor([self.loss, float(self.n), *[float(self.correct[k]) for k in self.topk]],
                         dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        t = t.cpu().tolist()
        self.loss, self.n = t[0], int(round(t[1]))
        self.correct = {k: int(round(v)) for k, v in zip(self.topk, t[2:])}


def _round(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 5)
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def train_record(epoch: int, inner_iter: int, lr: float, meter: Meter, memory_mb: Optional[int] = None) -> dict:
    """An mmcv train line: epoch and iter 1-based, per-iteration times, the interval's sample means."""
    rec: dict[str, Any] = OrderedDict(mode="train", epoch=int(epoch), iter=int(inner_iter), lr=float(lr))
    if memory_mb is not None:
        rec["memory"] = int(memory_mb)
    iters = max(meter.iters, 1)
    rec.update(time=meter.time / iters, data_time=meter.data_time / iters, **meter.metrics())
    return rec


def val_record(epoch: int, n_batches: int, lr: float, metrics: Mapping[str, float]) -> dict:
    """An mmcv val line (``iter``: the number of validation batches, as mmcv's ``eval_iter_num``)."""
    return OrderedDict(mode="val", epoch=int(epoch), iter=int(n_batches), lr=float(lr), **dict(metrics))


def text_line(rec: Mapping[str, Any], iters_per_epoch: int, eta_s: Optional[float] = None) -> str:
    """mmcv's text form of a train or val record."""
    skip = ("mode", "epoch", "iter", "lr", "time", "data_time", "memory")
    if rec["mode"] == "train":
        s = f"Epoch [{rec['epoch']}][{rec['iter']}/{iters_per_epoch}]\tlr: {rec['lr']:.3e}, "
        if eta_s is not None:
            s += f"eta: {datetime.timedelta(seconds=int(eta_s))}, "
        s += f"time: {rec['time']:.3f}, data_time: {rec['data_time']:.3f}, "
        if "memory" in rec:
            s += f"memory: {rec['memory']}, "
    else:
        s = f"Epoch({rec['mode']}) [{rec['epoch']}][{rec['iter']}]\t"
    items = [f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in rec.items() if k not in skip]
    return s + ", ".join(items)


class JsonLog:
    """Appends mmcv json-log lines to ``path`` (only where ``enabled``: rank 0)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, rec: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(OrderedDict((k, _round(v)) for k, v in rec.items())) + "\n")


def env_info() -> str:
    """mmcv-style ``env_info`` text: one ``name: value`` per line."""
    lines = [f"sys.platform: {sys.platform}", f"Python: {sys.version.replace(chr(10), ' ')}",
             f"PyTorch: {torch.__version__}", f"CUDA available: {torch.cuda.is_available()}",
             f"Machine: {platform.machine()}", f"Torch threads: {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        lines.append(f"GPU 0: {torch.cuda.get_device_name(0)}")
    try:
        import numpy
        lines.append(f"NumPy: {numpy.__version__}")
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- reading and plotting

def read_json_logs(paths: Iterable[Path]) -> tuple[list[dict], list[dict]]:
    """(train records, val records) of mmcv json logs, in order; a later file's record for the same
    (epoch, iter) replaces an earlier one's (a resumed run's logs read as one run)."""
    train: dict[tuple, dict] = {}
    val: dict[int, dict] = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        for line in p.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "epoch" not in rec:
                continue
            if rec.get("mode") == "train":
                train[(rec["epoch"], rec["iter"])] = rec
            elif rec.get("mode") == "val":
                val[rec["epoch"]] = rec
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)]


def plot_curves(paths: Sequence[Path], out: Path, iters_per_epoch: int, title: str = "") -> Path:
    """Loss, top-1 accuracy and learning rate against epochs (train per logged interval, val per
    epoch) from mmcv json logs, as a PNG. ImportError when matplotlib is missing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train, val = read_json_logs(paths)
    ipe = max(int(iters_per_epoch), 1)
    tx = [r["epoch"] - 1 + r["iter"] / ipe for r in train]
    vx = [r["epoch"] for r in val]
    fig = Figure(figsize=(12, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, name in ((axes[0], LOSS, "loss"), (axes[1], acc_key(1), "top-1 accuracy (%)")):
        if train:
            ax.plot(tx, [r.get(key, float("nan")) for r in train], lw=1.2, label="train")
        if val and key in val[0]:
            ax.plot(vx, [r.get(key, float("nan")) for r in val], "o-", lw=1.5, label="val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if train:
        axes[2].plot(tx, [r["lr"] for r in train], lw=1.2)
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("learning rate (logged iterations)")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp)
    tmp.replace(out)
    return out
