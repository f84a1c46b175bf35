"""lr_config in both dialects (and BIDL's top-level warmup): the LR curve of the torch scheduler each names,
iteration by iteration, against torch's own scheduler driven the way BIDL's training loop drives it."""
from __future__ import annotations

import pytest
import torch

from bidl_models.schedule import LrSchedule

IPE, EPOCHS, BASE = 7, 12, 0.1


def opt(lr=BASE):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def ours(lr_config, warmup=None, epochs=EPOCHS, ipe=IPE):
    o = opt()
    s = LrSchedule(o, lr_config, ipe, epochs, warmup=warmup)
    lrs = []
    for e in range(epochs):
        for i in range(ipe):
            lrs.append(s.apply(e * ipe + i))
            o.step()
        s.epoch_end()
    return lrs


def bidl_loop(cls, kwargs, warmup=None, epochs=EPOCHS, ipe=IPE):
    """BIDL's tools/train.py: the torch scheduler stepped once per epoch; the first W iterations set
    lr = base * (1 - (1 - i / W) * (1 - ratio)) over it."""
    o = opt()
    sched = cls(o, **kwargs)
    lrs = []
    for e in range(epochs):
        for i in range(ipe):
            it = e * ipe + i
            if warmup and it < warmup["warmup_iters"]:
                k = 1 - (1 - it / warmup["warmup_iters"]) * (1 - warmup["warmup_ratio"])
                for g in o.param_groups:
                    g["lr"] = BASE * k
            lrs.append(o.param_groups[0]["lr"])
            o.step()
        sched.step()
    return lrs


S = torch.optim.lr_scheduler
WARM = dict(warmup_ratio=1e-2, warmup_iters=17)  # ends mid-epoch 3, as 500 iterations do in BIDL's configs


@pytest.mark.parametrize("lr_config, cls, kwargs", [
    # the public repository's dialect: a torch scheduler and its own arguments
    (dict(policy="MultiStepLR", milestones=[3, 8]), S.MultiStepLR, dict(milestones=[3, 8])),
    (dict(policy="MultiStepLR", milestones=[3, 8], gamma=0.5), S.MultiStepLR, dict(milestones=[3, 8], gamma=0.5)),
    (dict(policy="CosineAnnealingLR", T_max=5, eta_min=0), S.CosineAnnealingLR, dict(T_max=5, eta_min=0)),
    (dict(policy="StepLR", step_size=4, gamma=0.3), S.StepLR, dict(step_size=4, gamma=0.3)),
    (dict(policy="ExponentialLR", gamma=0.8), S.ExponentialLR, dict(gamma=0.8)),
    # BIDL's _mp file: mmcv's policy name with torch's T_max and mmcv's min_lr
    (dict(policy="CosineAnnealing", T_max=5, min_lr=0.001), S.CosineAnnealingLR, dict(T_max=5, eta_min=0.001)),
])
@pytest.mark.parametrize("warmup", [None, WARM])
def test_torch_policies_follow_the_torch_scheduler(lr_config, cls, kwargs, warmup):
    got, want = ours(lr_config, warmup), bidl_loop(cls, kwargs, warmup)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert len(set(got)) >= 3


@pytest.mark.parametrize("lr_config, cls, kwargs", [
    # the user guide's dialect (mmcv): closed form, equal to the torch scheduler with the same meaning
    (dict(policy="CosineAnnealing", min_lr=0), S.CosineAnnealingLR, dict(T_max=EPOCHS, eta_min=0)),
    (dict(policy="CosineAnnealing", min_lr=0.002), S.CosineAnnealingLR, dict(T_max=EPOCHS, eta_min=0.002)),
    (dict(policy="step", step=[3, 8], gamma=0.1), S.MultiStepLR, dict(milestones=[3, 8], gamma=0.1)),
    (dict(policy="Step", step=4), S.MultiStepLR, dict(milestones=[4])),
])
@pytest.mark.parametrize("warmup", [None, WARM])
def test_mmcv_policies_follow_the_torch_scheduler(lr_config, cls, kwargs, warmup):
    """mmcv's policies give their rate every iteration, so after a (top-level) warmup the scheduled rate
    applies at once: the warmup's rates, then the torch scheduler's curve."""
    got, want = ours(lr_config, warmup), bidl_loop(cls, kwargs, None)
    if warmup:
        w, r = warmup["warmup_iters"], warmup["warmup_ratio"]
        want = [BASE * (1 - (1 - i / w) * (1 - r)) for i in range(w)] + want[w:]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_warmup_ramps_from_ratio_to_base():
    got = ours(dict(policy="MultiStepLR", milestones=[100]), dict(warmup_ratio=0.1, warmup_iters=10))
    assert got[0] == pytest.approx(0.01) and got[5] == pytest.approx(BASE * (1 - 0.5 * 0.9))
    assert got[9] == pytest.approx(BASE * (1 - 0.1 * 0.9))
    assert got[10:] == [got[9]] * (len(got) - 10)  # BIDL: the rate the warmup left, until the scheduler moves it


def drive(s: LrSchedule, o: torch.optim.Optimizer, start: int, stop: int) -> list[float]:
    """Global iterations [start, stop) as the trainer runs them: apply, step, epoch_end after an epoch's last."""
    lrs = []
    for it in range(start, stop):
        lrs.append(s.apply(it))
        o.step()
        if (it + 1) % IPE == 0:
            s.epoch_end()
    return lrs


def resumed_at(lr_config, warmup, at: int) -> list[float]:
    """The LRs of iterations [at, end) of a schedule saved after ``at`` iterations and loaded into a new one."""
    o, o2 = opt(), opt()
    s = LrSchedule(o, lr_config, IPE, EPOCHS, warmup=warmup)
    drive(s, o, 0, at)
    s2 = LrSchedule(o2, lr_config, IPE, EPOCHS, warmup=warmup)
    o2.load_state_dict(o.state_dict())
    s2.load_state_dict(s.state_dict())
    return drive(s2, o2, at, EPOCHS * IPE)


def test_resume_continues_the_same_curve():
    cfg = dict(policy="MultiStepLR", milestones=[3, 8])
    full = ours(cfg, WARM)
    assert drive(LrSchedule(o := opt(), cfg, IPE, EPOCHS, warmup=WARM), o, 0, EPOCHS * IPE) == full
    assert resumed_at(cfg, WARM, 5 * IPE) == pytest.approx(full[5 * IPE:], rel=1e-12)


@pytest.mark.parametrize("lr_config", [dict(policy="CosineAnnealing", min_lr=0.001, by_epoch=False),
                                       dict(policy="MultiStepLR", milestones=[3, 8])])
def test_resume_mid_epoch_continues_the_same_curve(lr_config):
    """Saved after 3 iterations of epoch 5, inside a warmup of 33 iterations: the schedule loaded from it and
    applied from global iteration 4 * IPE + 3 on gives the rest of the uninterrupted curve."""
    warm = dict(warmup_ratio=0.1, warmup_iters=4 * IPE + 5)
    full = ours(lr_config, warm)
    assert resumed_at(lr_config, warm, 4 * IPE + 3) == pytest.approx(full[4 * IPE + 3:], rel=1e-12)


@pytest.mark.parametrize("lr_config, warmup, match", [
    (dict(policy="Cosine"), None, r"lr_config.policy='Cosine': expected an mmcv policy .* or a torch"),
    (dict(policy="MultiStepLR", milestone=[3]), None, r"lr_config policy='MultiStepLR': unexpected key\(s\) "
                                                      r"\['milestone'\]"),
    (dict(policy="MultiStepLR"), None, r"missing required key\(s\) \['milestones'\]"),
    (dict(policy="CosineAnnealing", min_lr=0, stepp=3), None, r"lr_config: unexpected key\(s\) \['stepp'\]"),
    (dict(policy="CosineAnnealing", T_max=4, eta_min=0), None, r"unexpected key\(s\) \['eta_min'\] with "
                                                                r"policy='CosineAnnealing' and T_max"),
    (dict(policy="MultiStepLR", milestones=[3], by_epoch=False), None, "by_epoch=False"),
    (dict(policy="ReduceLROnPlateau"), None, "expected an mmcv policy"),
    (dict(policy="MultiStepLR", milestones=[3]), dict(warmup_ratio=0.1, warmup_iter=5),
     r"warmup: unexpected key\(s\) \['warmup_iter'\]"),
    (dict(policy="MultiStepLR", milestones=[3]), dict(warmup_ratio=2.0), r"warmup.warmup_ratio=2.0"),
    (dict(policy="CosineAnnealing", warmup="linear", warmup_iters=3), dict(warmup_iters=3),
     "both set a warmup"),
])
def test_bad_lr_configs_are_named(lr_config, warmup, match):
    with pytest.raises(ValueError, match=match):
        LrSchedule(opt(), lr_config, IPE, EPOCHS, warmup=warmup)
