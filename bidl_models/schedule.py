"""Learning-rate schedules from a config's ``lr_config`` (both dialects) and BIDL's top-level ``warmup``.

``lr_config.policy`` is one of:

* mmcv's (the user guide's dialect), computed in closed form every iteration:
  ``'CosineAnnealing'`` (``min_lr`` or ``min_lr_ratio``): ``lr = min + (base - min)(1 + cos(pi p / P)) / 2``
  with ``p`` the epoch (iteration if ``by_epoch=False``) and ``P`` all of them -- the curve of
  ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=max_epochs, eta_min=min_lr)``;
  ``'step'`` (``step``: an epoch or a list of them, ``gamma``, ``min_lr``): ``base * gamma^(steps passed)``
  -- ``MultiStepLR(milestones=step, gamma)``; ``'fixed'``. mmcv's warmup keys inside ``lr_config``
  (``warmup='linear'|'constant'|'exp'``, ``warmup_iters``, ``warmup_ratio``, ``warmup_by_epoch``) scale
  the scheduled rate. ``'CosineAnnealing'`` with torch's ``T_max`` (BIDL's ``_mp`` config writes
  ``dict(policy='CosineAnnealing', T_max=40, min_lr=0)``) is ``CosineAnnealingLR(T_max, eta_min=min_lr)``.
* the name of a ``torch.optim.lr_scheduler`` class with its own keyword arguments (the public
  repository's dialect: ``dict(policy='MultiStepLR', milestones=[10, 16])``,
  ``dict(policy='CosineAnnealingLR', T_max=40, eta_min=0)``): that scheduler, stepped once per epoch,
  as BIDL's ``tools/train.py`` does.

BIDL's top-level ``warmup = dict(warmup_ratio=r, warmup_iters=W)`` sets, for the first W iterations,
``lr = base * (1 - (1 - i / W) * (1 - r))`` (``base``: the optimizer's configured rate), overriding
the schedule, as BIDL's training loop does; after it the scheduler carries on from there.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from .registry import check_kwargs

MMCV_POLICIES = ("CosineAnnealing", "step", "Step", "fixed", "Fixed")
WARMUPS = (None, "linear", "constant", "exp")
MMCV_KEYS = ("policy", "by_epoch", "min_lr", "min_lr_ratio", "step", "gamma", "warmup", "warmup_iters",
             "warmup_ratio", "warmup_by_epoch", "T_max")
#: torch schedulers that need callables or other schedulers, or a metric: not expressible in a config.
_NOT_FROM_CONFIG = ("LambdaLR", "MultiplicativeLR", "SequentialLR", "ChainedScheduler", "ReduceLROnPlateau")


def torch_scheduler_class(name: str) -> Optional[type]:
    """The ``torch.optim.lr_scheduler`` class called ``name`` (None if there is none)."""
    cls = getattr(torch.optim.lr_scheduler, str(name), None)
    base = getattr(torch.optim.lr_scheduler, "LRScheduler", torch.optim.lr_scheduler._LRScheduler)
    if isinstance(cls, type) and issubclass(cls, base) and name not in _NOT_FROM_CONFIG and not name.startswith("_"):
        return cls
    return None


def torch_scheduler_names() -> list[str]:
    return sorted(n for n in dir(torch.optim.lr_scheduler) if torch_scheduler_class(n) is not None)


def parse_warmup(cfg: Any) -> tuple[int, float]:
    """BIDL's top-level ``warmup = dict(warmup_ratio, warmup_iters)`` -> (iters, ratio); None -> (0, 1)."""
    if not cfg:
        return 0, 1.0
    if not isinstance(cfg, Mapping):
        raise ValueError(f"warmup={cfg!r}: expected dict(warmup_ratio=..., warmup_iters=...)")
    bad = sorted(set(cfg) - {"warmup_ratio", "warmup_iters"})
    if bad:
        raise ValueError(f"warmup: unexpected key(s) {bad}; accepted keys: ['warmup_ratio', 'warmup_iters']")
    iters, ratio = cfg.get("warmup_iters", 0), cfg.get("warmup_ratio", 0.1)
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"warmup.warmup_iters={iters!r}: expected an int >= 0")
    if not isinstance(ratio, (int, float)) or not 0 < float(ratio) <= 1:
        raise ValueError(f"warmup.warmup_ratio={ratio!r}: expected a number in (0, 1]")
    return iters, float(ratio)


class LrSchedule:
    """Per-iteration learning rates for ``optimizer`` (see the module docstring).

    The trainer calls :meth:`apply` before every iteration (global index ``it``) and
    :meth:`epoch_end` after every epoch; :meth:`state_dict` goes into checkpoints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Optional[Mapping[str, Any]], iters_per_epoch: int,
                 max_epochs: int, warmup: Optional[Mapping[str, Any]] = None):
        cfg = dict(cfg or {})
        self.optimizer, self.ipe, self.max_epochs = optimizer, max(int(iters_per_epoch), 1), int(max_epochs)
        self.policy = cfg.get("policy", "fixed")
        self.bidl_warmup_iters, self.bidl_warmup_ratio = parse_warmup(warmup)
        self.torch_sched: Optional[torch.optim.lr_scheduler.LRScheduler] = None
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        for g, b in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = b
        self.last_iter = 0
        self.warmup = None
        if self.policy == "CosineAnnealing" and "T_max" in cfg:
            self._mmcv_cosine_with_t_max(cfg)
        elif self.policy in MMCV_POLICIES:
            self._mmcv(cfg)
        elif torch_scheduler_class(self.policy) is not None:
            self._torch(self.policy, {k: v for k, v in cfg.items() if k != "policy"})
        else:
            raise ValueError(f"lr_config.policy={self.policy!r}: expected an mmcv policy {list(MMCV_POLICIES)} or a "
                             f"torch.optim.lr_scheduler class {torch_scheduler_names()}")
        if self.warmup and self.bidl_warmup_iters:
            raise ValueError("lr_config.warmup and the top-level warmup both set a warmup; expected one of them")

    # ------------------------------------------------------------------ construction
    def _torch(self, name: str, kwargs: dict) -> None:
        cls = torch_scheduler_class(name)
        if kwargs.pop("by_epoch", True) is not True:
            raise ValueError(f"lr_config.by_epoch=False with policy={name!r}: torch schedulers step once per "
                             "epoch here (as BIDL's); expected by_epoch=True or no by_epoch")
        check_kwargs(cls, {"optimizer": None, **kwargs}, f"lr_config policy={name!r}")
        self.torch_sched = cls(self.optimizer, **kwargs)

    def _mmcv_cosine_with_t_max(self, cfg: dict) -> None:
        bad = sorted(set(cfg) - {"policy", "T_max", "min_lr", "by_epoch"})
        if bad:
            raise ValueError(f"lr_config: unexpected key(s) {bad} with policy='CosineAnnealing' and T_max "
                             "(read as CosineAnnealingLR(T_max, eta_min=min_lr)); accepted keys: "
                             "['policy', 'T_max', 'min_lr', 'by_epoch']")
        self._torch("CosineAnnealingLR", dict(T_max=cfg["T_max"], eta_min=cfg.get("min_lr", 0.0),
                                              by_epoch=cfg.get("by_epoch", True)))

    def _mmcv(self, cfg: dict) -> None:
        bad = sorted(set(cfg) - set(MMCV_KEYS) - {"T_max"})
        if bad:
            raise ValueError(f"lr_config: unexpected key(s) {bad}; accepted keys: {list(MMCV_KEYS)}")
        self.policy = {"Step": "step", "Fixed": "fixed"}.get(self.policy, self.policy)
        self.by_epoch = bool(cfg.get("by_epoch", True))
        self.min_lr, self.min_lr_ratio = cfg.get("min_lr"), cfg.get("min_lr_ratio")
        if self.policy == "CosineAnnealing" and (self.min_lr is None) == (self.min_lr_ratio is None):
            if self.min_lr is None:
                self.min_lr = 0.0
            else:
                raise ValueError("lr_config: give only one of min_lr and min_lr_ratio")
        step = cfg.get("step")
        if self.policy == "step":
            if step is None:
                raise ValueError("lr_config.policy='step' needs lr_config.step (an epoch or a list of epochs)")
            step = [step] if isinstance(step, int) else list(step)
            if not all(isinstance(s, int) and s > 0 for s in step):
                raise ValueError(f"lr_config.step={cfg.get('step')!r}: expected positive ints")
        self.step_at, self.gamma = step, float(cfg.get("gamma", 0.1))
        self.warmup = cfg.get("warmup")
        if self.warmup not in WARMUPS:
            raise ValueError(f"lr_config.warmup={self.warmup!r}: expected one of {list(WARMUPS)}")
        wi = int(cfg.get("warmup_iters", 0) or 0)
        self.warmup_iters = wi * self.ipe if cfg.get("warmup_by_epoch") else wi
        self.warmup_ratio = float(cfg.get("warmup_ratio", 0.1))
        if not 0 < self.warmup_ratio <= 1:
            raise ValueError(f"lr_config.warmup_ratio={self.warmup_ratio!r}: expected in (0, 1]")

    # ------------------------------------------------------------------ rates
    def regular_lr(self, base: float, it: int) -> float:
        """The mmcv policy's rate at iteration ``it`` (no warmup)."""
        epoch = it // self.ipe
        progress, total = (epoch, self.max_epochs) if self.by_epoch else (it, self.max_epochs * self.ipe)
        if self.policy == "CosineAnnealing":
            target = self.min_lr if self.min_lr is not None else base * self.min_lr_ratio
            frac = min(progress / max(total, 1), 1.0)
            return target + (base - target) * (1 + math.cos(math.pi * frac)) / 2
        if self.policy == "step":
            n = sum(progress >= s for s in self.step_at)
            lr = base * self.gamma ** n
            return max(lr, self.min_lr) if self.min_lr is not None else lr
        return base

    def lr_at(self, it: int) -> list[float]:
        """mmcv policies: the rates at iteration ``it`` (with lr_config's warmup)."""
        lrs = [self.regular_lr(b, it) for b in self.base_lrs]
        if self.warmup and it < self.warmup_iters:
            r = self.warmup_ratio
            if self.warmup == "linear":
                k = 1 - (1 - it / self.warmup_iters) * (1 - r)
            elif self.warmup == "constant":
                k = r
            else:
                k = r ** (1 - it / self.warmup_iters)
            lrs = [lr * k for lr in lrs]
        return lrs

    def apply(self, it: int) -> float:
        """Set the optimizer's learning rates for global iteration ``it``; returns the first."""
        self.last_iter = it
        groups = self.optimizer.param_groups
        if self.torch_sched is None:
            for g, lr in zip(groups, self.lr_at(it)):
                g["lr"] = lr
        if it < self.bidl_warmup_iters:
            k = 1 - (1 - it / self.bidl_warmup_iters) * (1 - self.bidl_warmup_ratio)
            for g, base in zip(groups, self.base_lrs):
                g["lr"] = base * k
        return float(groups[0]["lr"])

    def epoch_end(self) -> None:
        """After every epoch: a torch scheduler steps (BIDL steps it per epoch)."""
        if self.torch_sched is not None:
            self.torch_sched.step()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"last_iter": self.last_iter, "base_lrs": list(self.base_lrs), "policy": self.policy,
                "torch": self.torch_sched.state_dict() if self.torch_sched is not None else None}

    def load_state_dict(self, sd: Mapping[str, Any], fallback_iter: int = 0) -> None:
        """Restore; ``sd`` may come from a BIDL checkpoint (``{'torch': scheduler_stat_dict}`` only)."""
        self.last_iter = int(sd["last_iter"]) if sd.get("last_iter") is not None else int(fallback_iter)
        if sd.get("base_lrs") is not None:
            self.base_lrs = [float(b) for b in sd["base_lrs"]]
        if self.torch_sched is not None:
            if sd.get("torch") is None:
                raise ValueError(f"the checkpoint has no state for the torch scheduler {self.policy!r} "
                                 f"(it was written with policy={sd.get('policy')!r})")
            self.torch_sched.load_state_dict(dict(sd["torch"]))
