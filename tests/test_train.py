"""The train and test CLIs on a tiny generated dataset, resume, Ctrl-C, bad input, the demo weights."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bidl_models import evaluate as test_cli
from bidl_models import train as train_cli
from bidl_models.backbones import build_backbone
from bidl_models.registry import BACKBONES
from bidl_models.checkpoint import load_weights, read_state_dict, to_bidl
from bidl_models.classifier import build_classifier
from bidl_models.config import REPO_CONFIGS, load_config
from bidl_models.datasets import build_dataset
from bidl_models.inference import amp_dtype
from bidl_models.trainer import Stopped, Trainer, check_sections, fp16_loss_scale

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = "clif3fc3dm_itout-b16x1-dvsglyphs"
DEMO_WEIGHTS = REPO / "bidl_models" / "weights" / f"{DEMO_CONFIG}.pth"

# DvsGlyphs at 24x24, T=6, digits 0 and 1 only (analog LIF output): 48 training samples, 6 iterations
# of 8 per epoch, a few seconds on one core; this one epoch lowers the loss 0.700 -> 0.628 (measured).
TINY = f"""
_base_ = [{str(REPO_CONFIGS / 'dvsglyphs' / (DEMO_CONFIG + '.py'))!r}]
model = dict(backbone=dict(timestep=6, h0=24, w0=24, nclass=2, cmode='analog'))
small = dict(timestep=6, size=(24, 24), num_classes=2)
data = dict(
    samples_per_gpu=8, workers_per_gpu=0,
    train=dict(**small, num_samples=48, pipeline=[
        dict(type='RandomCropVideo', size=24, padding=2),
        dict(type='ToTensorType', keys=['img'], dtype='float32'),
        dict(type='ToTensor', keys=['gt_label']),
        dict(type='Collect', keys=['img', 'gt_label'])]),
    val=dict(**small, num_samples=24),
    test=dict(**small, num_samples=24),
)
optimizer = dict(lr=2e-3)
lr_config = dict(_delete_=True, policy='CosineAnnealing', min_lr=1e-4, by_epoch=False)
runner = dict(max_epochs=1)
log_config = dict(interval=2)
models_compile_inputshape = [[1, 2, 24, 24]]
"""


def run_train(cfg: Path, work: Path, *extra: str, tensorboard: bool = False, callbacks=()) -> dict:
    torch.set_num_threads(1)
    flags = [] if tensorboard else ["--no-tensorboard"]
    return train_cli.run(["--config", str(cfg), "--work-dir", str(work), "--no-progress", *flags, *extra],
                           callbacks=callbacks)


def json_log(work: Path, mode: str = "val") -> list[dict]:
    """The ``mode`` lines ('train' or 'val') of every mmcv json log in ``work``, in order."""
    lines = []
    for f in sorted(work.glob("*.log.json")):
        lines += [json.loads(ln) for ln in f.read_text().splitlines()]
    return [r for r in lines if r.get("mode") == mode]


def train_mode_loss(model: torch.nn.Module, cfg) -> float:
    """Loss over the whole (un-augmented) training set in one batch, train-mode BN, no update."""
    ds = build_dataset(dict(cfg.data.train.to_dict(), pipeline=cfg.data.val.pipeline.to_dict()
                            if hasattr(cfg.data.val.pipeline, "to_dict") else list(cfg.data.val.pipeline)))
    x = torch.stack([ds[i]["img"] for i in range(len(ds))])
    y = torch.as_tensor(ds.get_gt_labels())
    model.train()
    with torch.no_grad():
        return float(model.head.compute_loss(model(x), y))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg_path = root / "tiny-glyphs.py"
    cfg_path.write_text(TINY)
    work = root / "work"
    summary = run_train(cfg_path, work, tensorboard=True)
    return cfg_path, work, summary


def test_one_epoch_lowers_the_loss_and_writes_checkpoints(tiny):
    cfg_path, work, summary = tiny
    cfg = load_config(cfg_path)
    assert summary["epochs"] == 1 and (work / "latest.pth").is_file() and (work / "best.pth").is_file()
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert set(ck) >= {"state_dict", "optimizer", "scheduler", "epoch", "config", "meta"}
    assert ck["epoch"] == 1 and ck["meta"]["iter"] == 6 and ck["config"]["data"]["train"]["num_samples"] == 48
    before = build_classifier(cfg.model.to_dict(), seed=0)              # the run's initial weights (seed 0)
    loss0 = train_mode_loss(before, cfg)
    after = build_classifier(cfg.model.to_dict(), seed=0)
    after.load_state_dict(ck["state_dict"])
    loss1 = train_mode_loss(after, cfg)
    assert loss1 < 0.95 * loss0, (loss0, loss1)
    # the checkpoint loads into a bare backbone (what compile and the runtime do)
    bare = build_backbone(cfg.model.backbone.to_dict())
    load_weights(bare, read_state_dict(work / "latest.pth"))
    logs = list(work.glob("*.log"))
    assert logs and "epoch 1/1" in logs[0].read_text()
    rec = json_log(work)
    assert [r["epoch"] for r in rec] == [1] and "accuracy_top-1" in rec[0]


def test_work_dir_holds_the_merged_config_epoch_checkpoints_and_curves(tiny):
    cfg_path, work, _ = tiny
    dumped = work / "tiny-glyphs.py"                          # mmcv: <work_dir>/<config file name>
    text = dumped.read_text()
    assert "_base_" not in text and "RandomCropVideo" in text
    assert load_config(dumped).to_dict() == load_config(cfg_path).to_dict()    # the merged config, loadable
    assert (work / "epoch_1.pth").is_file() and (work / "latest.pth").samefile(work / "epoch_1.pth")
    png = (work / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_json_log_is_mmcvs_format(tiny):
    """First line: the run's info (no 'epoch', so mmcls's analyze_logs skips it); then mmcv's train lines
    every log_config.interval (2) iterations and a val line per epoch, one metric naming scheme."""
    cfg_path, work, summary = tiny
    lines = [json.loads(ln) for ln in next(work.glob("*.log.json")).read_text().splitlines()]
    info, rest = lines[0], lines[1:]
    assert "epoch" not in info and {"env_info", "config", "seed", "exp_name"} <= set(info)
    assert "PyTorch: " in info["env_info"] and info["exp_name"] == "tiny-glyphs.py" and info["seed"] == 0
    assert load_config(cfg_path).to_dict()["data"]["train"]["num_samples"] == 48 and "num_samples" in info["config"]
    train = [r for r in rest if r["mode"] == "train"]
    val = [r for r in rest if r["mode"] == "val"]
    assert len(train) + len(val) == len(rest)
    assert [(r["epoch"], r["iter"]) for r in train] == [(1, 2), (1, 4), (1, 6)]
    metrics = ["loss", "accuracy_top-1", "accuracy_top-5"]
    assert [list(r) for r in train] == [["mode", "epoch", "iter", "lr", "time", "data_time", *metrics]] * 3
    assert [list(r) for r in val] == [["mode", "epoch", "iter", "lr", "accuracy_top-1", "accuracy_top-5", "loss"]]
    assert val[0]["epoch"] == 1 and val[0]["iter"] == 3                       # 24 val samples / batch 8
    assert val[0]["accuracy_top-1"] == pytest.approx(summary["history"][0]["val"]["accuracy_top-1"], abs=1e-5)
    assert all(r["time"] >= r["data_time"] >= 0 for r in train)
    # an epoch's train lines average to the epoch's train loss (equal batches of 8 here)
    mean = sum(r["loss"] for r in train) / 3
    assert mean == pytest.approx(summary["history"][0]["train"]["loss"], abs=1e-4)
    text = next(work.glob("*.log")).read_text()
    assert "Epoch [1][2/6]\tlr: " in text and ", data_time: " in text and "Epoch(val) [1][3]\taccuracy_top-1: " in text


def test_tensorboard_scalars_when_installed_else_a_log_line(tiny):
    _, work, _ = tiny
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        assert "TensorBoard scalars disabled" in next(work.glob("*.log")).read_text()
        assert not (work / "tf_logs").exists()
        return
    ea = EventAccumulator(str(work / "tf_logs"))
    ea.Reload()
    tags = ea.Tags()["scalars"]
    assert {"iter/loss", "iter/lr", "train/loss", "train/lr", "val/accuracy_top-1", "val/loss"} <= set(tags)
    assert [e.step for e in ea.Scalars("iter/lr")] == list(range(1, 7))      # per iteration
    assert [e.step for e in ea.Scalars("val/accuracy_top-1")] == [1]         # per epoch


def test_resume_continues_the_epoch_count_like_an_uninterrupted_run(tiny, tmp_path):
    cfg_path, _, _ = tiny
    # a step schedule (lr halves after epoch 1) does not depend on max_epochs, so 1 + 1 resumed epochs
    # must retrace 2 straight epochs exactly: same weights, optimizer state, LR, data order and crops
    sched = ["lr_config.policy=step", "lr_config.step=[1]", "lr_config.gamma=0.5", "lr_config.by_epoch=True"]
    first = tmp_path / "first"
    run_train(cfg_path, first, "--cfg-options", *sched, "runner.max_epochs=1")
    resumed = tmp_path / "resumed"
    rec = run_train(cfg_path, resumed, "--resume-from", str(first / "latest.pth"), "--cfg-options", *sched,
                    "runner.max_epochs=2")["history"]
    assert [r["epoch"] for r in rec] == [2] and rec[0]["iter"] == 12
    assert [r["epoch"] for r in json_log(resumed)] == [2]
    assert rec[0]["train"]["lr"] == pytest.approx(1e-3)                # the schedule continued from epoch 1
    ck = torch.load(resumed / "latest.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["scheduler"]["last_iter"] == 11
    straight = tmp_path / "straight"
    rec2 = run_train(cfg_path, straight, "--cfg-options", *sched, "runner.max_epochs=2")["history"]
    assert [r["epoch"] for r in rec2] == [1, 2] and [r["epoch"] for r in json_log(straight)] == [1, 2]
    assert rec2[1]["train"]["loss"] == pytest.approx(rec[0]["train"]["loss"], rel=1e-5)
    ck2 = torch.load(straight / "latest.pth", weights_only=True)
    for k, v in ck2["state_dict"].items():
        assert torch.allclose(v.float(), ck["state_dict"][k].float(), atol=1e-6), k


def test_resume_flag_without_a_path_takes_the_latest_and_resume_from_takes_a_work_dir_name(tiny, tmp_path,
                                                                                        monkeypatch):
    cfg_path, _, _ = tiny
    work = tmp_path / "w"
    fresh = run_train(cfg_path, work, "--resume")               # nothing to resume: trains from scratch
    assert [r["epoch"] for r in fresh["history"]] == [1]
    assert "--resume: no latest.pth or epoch_N.pth in" in next(work.glob("*.log")).read_text()
    (work / "latest.pth").unlink()                              # the newest epoch_N.pth is found instead
    again = run_train(cfg_path, work, "--resume", "--cfg-options", "runner.max_epochs=2")
    assert [r["epoch"] for r in again["history"]] == [2]
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["epoch"] == 2 and (work / "epoch_2.pth").is_file()
    monkeypatch.chdir(tmp_path)                                 # BIDL: --resume-from names a file in the work dir
    bidl_style = run_train(cfg_path, work, "--resume-from", "epoch_1.pth", "--cfg-options", "runner.max_epochs=2")
    assert [r["epoch"] for r in bidl_style["history"]] == [2]
    explicit = run_train(cfg_path, work, "--resume", str(work / "epoch_2.pth"), "--cfg-options", "runner.max_epochs=3")
    assert [r["epoch"] for r in explicit["history"]] == [3]
    with pytest.raises(FileNotFoundError, match=r"--resume-from 'nope.pth': no such checkpoint \(looked for "):
        run_train(cfg_path, work, "--resume-from", "nope.pth")
    with pytest.raises(ValueError, match="give one of them"):
        run_train(cfg_path, work, "--resume", "--resume-from", "latest.pth")


def test_epoch_checkpoints_keep_max_keep_ckpts(tiny, tmp_path):
    cfg_path, _, _ = tiny
    work = tmp_path / "w"
    run_train(cfg_path, work, "--cfg-options", "runner.max_epochs=4", "checkpoint_config.max_keep_ckpts=2",
              "data.train.num_samples=16", "data.val.num_samples=8")
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_3.pth", "epoch_4.pth"]
    assert (work / "latest.pth").samefile(work / "epoch_4.pth")
    ck = torch.load(work / "epoch_3.pth", weights_only=True)
    assert ck["epoch"] == 3 and ck["meta"]["saved_epochs"] == [2, 3]
    work2 = tmp_path / "w2"                                     # interval 2 of 3 epochs: epoch 2, and the last
    run_train(cfg_path, work2, "--cfg-options", "runner.max_epochs=3", "checkpoint_config.interval=2",
              "data.train.num_samples=16", "data.val.num_samples=8")
    assert sorted(p.name for p in work2.glob("epoch_*.pth")) == ["epoch_2.pth", "epoch_3.pth"]
    with pytest.raises(ValueError, match=r"checkpoint_config.max_keep_ckpts='2': expected an int"):
        run_train(cfg_path, tmp_path / "w3", "--cfg-options", "checkpoint_config.max_keep_ckpts='2'")


# a per-iteration LR (BIDL's warmup over 9 iterations, then mmcv's per-iteration cosine), LIF noise (the model's
# own randomness) and random crops: an interrupted run must retrace all of it
EXACT = ["runner.max_epochs=2", "warmup={'warmup_ratio': 0.1, 'warmup_iters': 9}", "model.backbone.noise=0.3"]


@pytest.mark.slow   # 13-27 s on 2 cores
def test_ctrl_c_mid_epoch_then_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    """Interrupted three times by SIGINT (after global iterations 4, 6 and 9: mid-epoch 1 inside the warmup,
    during epoch 1's validation, mid-epoch 2) and resumed with --resume each time, on 2 DataLoader workers: the
    same LR and loss at every one of the 12 iterations, and bit-identical final weights and optimizer state,
    as one straight run without workers."""
    cfg_path, _, _ = tiny
    straight: list = []
    s = run_train(cfg_path, tmp_path / "straight", "--cfg-options", *EXACT,
                  callbacks=[lambda tr, info: straight.append((info["iter"], info["lr"], info["loss"]))])
    assert [i for i, _, _ in straight] == list(range(12))

    work, seen = tmp_path / "interrupted", []

    def interrupt_at(k):
        def cb(tr, info):
            seen.append((info["iter"], info["lr"], info["loss"]))
            if info["iter"] == k:
                signal.raise_signal(signal.SIGINT)              # what Ctrl-C does; the handler lets the iteration end
        return [cb]

    with pytest.raises(KeyboardInterrupt):
        run_train(cfg_path, work, "--workers", "2", "--cfg-options", *EXACT, callbacks=interrupt_at(3))
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["interrupted"] is True and ck["epoch"] == 0 and ck["meta"]["iter"] == 4
    assert ck["meta"]["position"]["inner_iter"] == 4 and "rng" in ck
    assert (work / "curves.png").is_file()
    with pytest.raises(KeyboardInterrupt):    # at epoch 1's last iteration: the epoch ends, its validation stops
        run_train(cfg_path, work, "--resume", "--workers", "2", "--cfg-options", *EXACT, callbacks=interrupt_at(5))
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["epoch"] == 1 and ck["meta"]["position"]["inner_iter"] == 0 and ck["meta"]["val_pending"] is True
    assert not (work / "epoch_1.pth").exists() and "rng" not in ck
    with pytest.raises(KeyboardInterrupt):
        run_train(cfg_path, work, "--resume", "--workers", "2", "--cfg-options", *EXACT, callbacks=interrupt_at(8))
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["epoch"] == 1 and ck["meta"]["position"]["inner_iter"] == 3 and ck["meta"]["iter"] == 9
    r = run_train(cfg_path, work, "--resume", "--workers", "2", "--cfg-options", *EXACT, callbacks=interrupt_at(-1))
    assert [i for i, _, _ in seen] == list(range(12))          # no iteration replayed, none skipped
    assert [lr for _, lr, _ in seen] == [lr for _, lr, _ in straight]           # the same LR curve, exactly
    assert [loss for _, _, loss in seen] == [loss for _, _, loss in straight]   # same batches, crops, noise
    a = torch.load(tmp_path / "straight" / "latest.pth", weights_only=True)
    b = torch.load(work / "latest.pth", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i])
    assert r["history"][-1]["val"] == s["history"][-1]["val"]
    # the logs of the three runs read as one: every epoch's last iteration and both validations
    from bidl_models.train_log import read_json_logs
    train, val = read_json_logs(b["meta"]["json_logs"])
    assert len(b["meta"]["json_logs"]) == 4 and {(1, 6), (2, 3), (2, 6)} <= {(t["epoch"], t["iter"]) for t in train}
    assert [v["epoch"] for v in val] == [1, 2]


def test_resume_from_a_bidl_checkpoint_equals_resuming_from_ours(tiny, tmp_path):
    """--resume-from takes BIDL's tools/train.py file (module. keys, 0-based epoch, optimizer_state_dict)."""
    cfg_path, _, _ = tiny
    sched = ["lr_config.policy=step", "lr_config.step=[1]", "lr_config.gamma=0.5", "lr_config.by_epoch=True"]
    first = tmp_path / "first"
    run_train(cfg_path, first, "--cfg-options", *sched, "runner.max_epochs=1")
    bidl = to_bidl(torch.load(first / "latest.pth", weights_only=True))
    bidl["state_dict"] = {f"module.{k}": v for k, v in bidl["state_dict"].items()}   # as trained on GPUs
    assert list(bidl) == ["state_dict", "optimizer_state_dict", "scheduler_stat_dict", "epoch", "time", "iters",
                          "seed", "config"] and bidl["epoch"] == 0
    torch.save(bidl, tmp_path / "bidl_latest.pth")
    results = {}
    for name, src in (("ours", first / "latest.pth"), ("bidl", tmp_path / "bidl_latest.pth")):
        run_train(cfg_path, tmp_path / name, "--resume-from", str(src), "--cfg-options", *sched, "runner.max_epochs=2")
        assert [r["epoch"] for r in json_log(tmp_path / name)] == [2]
        results[name] = torch.load(tmp_path / name / "latest.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(results["ours"][k], results["bidl"][k]) for k in results["ours"])


def test_load_from_a_bidl_checkpoint(tiny, tmp_path):
    cfg_path, work, _ = tiny
    sd = read_state_dict(work / "latest.pth")
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "bare.pth")   # BIDL: bare, GPU-trained
    args = train_cli.parse_args(["--config", str(cfg_path), "--work-dir", str(tmp_path / "w"), "--load-from",
                                 str(tmp_path / "bare.pth"), "--no-tensorboard"])
    trainer = Trainer(load_config(cfg_path), train_cli.options(args))
    trainer.close()
    got = trainer.model.backbone.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd) and list(got) == list(sd)
    torch.save({"state_dict": {k: v for k, v in sd.items() if k != "head.2.bias"}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"load_from .*bad.pth' does not match .*missing keys: head\.2\.bias"):
        Trainer(load_config(cfg_path), train_cli.options(train_cli.parse_args(
            ["--config", str(cfg_path), "--work-dir", str(tmp_path / "w2"), "--load-from", str(tmp_path / "bad.pth")])))
    pkg = logging.getLogger("bidl_models")
    assert pkg.handlers == [] and pkg.propagate       # a trainer that failed to build leaves no handler behind


TINY_BIDL = """
# BIDL's public-repository dialect: input_channels/h/w, torch scheduler, top-level warmup, fp16, data.* without type
model = dict(type='ImageClassifier', neck=None,
             backbone=dict(type='SeqClif3Fc3DmItout', timestep=6, input_channels=2, h=24, w=24, nclass=2,
                           cmode='analog', amode='mean', noise=0, soma_params='all_share', neuron='lif',
                           neuron_config=None),
             head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
                       topk=(1, 5), cal_acc=True))
dataset_type = 'DvsGlyphs'
small = dict(timestep=6, size=(24, 24), num_classes=2)
train_pipeline = [dict(type='ToTensorType', keys=['img'], dtype='float32'), dict(type='ToTensor', keys=['gt_label']),
                  dict(type='Collect', keys=['img', 'gt_label'])]
data = dict(samples_per_gpu=8, workers_per_gpu=0, data_root='./data',
            train=dict(**small, split='train', num_samples=48, pipeline=train_pipeline),
            val=dict(**small, split='test', num_samples=16,
                     pipeline=[dict(type='ToTensorType', keys=['img'], dtype='float32'), dict(type='Collect', keys=['img'])]))
optimizer = dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=0.0001, nesterov=True)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[1])
warmup = dict(warmup_ratio=0.1, warmup_iters=4)
runner = dict(type='EpochBasedRunner', max_epochs=2)
checkpoint_config = dict(interval=1)
log_config = dict(interval=100, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
"""


def test_a_config_in_bidls_dialect_trains(tmp_path):
    cfg_path = tmp_path / "tiny-bidl.py"
    cfg_path.write_text(TINY_BIDL)
    rec = run_train(cfg_path, tmp_path / "w")["history"]
    # 6 iterations per epoch; warmup over iterations 0..3 (0.05 * (1 - (1 - i/4) * 0.9)), then the rate it
    # left until MultiStepLR steps at the end of epoch 1 (x 0.1), as BIDL's loop does
    assert [r["epoch"] for r in rec] == [1, 2] and [r["epoch"] for r in json_log(tmp_path / "w")] == [1, 2]
    assert rec[0]["train"]["lr"] == pytest.approx(0.05 * (1 - 0.25 * 0.9))
    assert rec[1]["train"]["lr"] == pytest.approx(0.05 * (1 - 0.25 * 0.9) * 0.1)
    log_text = next((tmp_path / "w").glob("*.log")).read_text()
    assert "AMP requested but the device is cpu" in log_text
    ck = torch.load(tmp_path / "w" / "latest.pth", weights_only=True)
    assert ck["scheduler"]["torch"]["last_epoch"] == 2 and ck["config"]["data"]["train"]["type"] == "DvsGlyphs"


def test_test_cli_reproduces_the_checkpoint_accuracy(tiny, capsys, tmp_path):
    cfg_path, work, _ = tiny
    best = torch.load(work / "best.pth", weights_only=True)
    want = best["meta"]["val"]
    res = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r.json")])
    assert res["accuracy_top-1"] == pytest.approx(want["accuracy_top-1"])
    assert res["accuracy_top-5"] == pytest.approx(want["accuracy_top-5"])
    assert res["samples"] == 24 and res["frames_per_s"] > 0 and res["timestep"] == 6
    assert "time-step frames/s" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["accuracy_top-1"] == res["accuracy_top-1"]
    odd = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                         "--batch-size", "5", "--no-progress", "--export-to", str(tmp_path / "w.pth")])
    assert odd["accuracy_top-1"] == res["accuracy_top-1"] and odd["batch_size"] == 5   # any batch size
    exported = torch.load(tmp_path / "w.pth", weights_only=True)
    assert "optimizer" not in exported and exported["meta"]["test_top1"] == res["accuracy_top-1"]
    assert exported["meta"]["test_top1_first200"] == pytest.approx(res["accuracy_top-1"])   # 24 < 200 samples
    bare = build_backbone(load_config(cfg_path).model.backbone.to_dict())
    load_weights(bare, read_state_dict(tmp_path / "w.pth"))


def test_test_cli_takes_bidl_checkpoints(tiny, tmp_path):
    cfg_path, work, _ = tiny
    ours = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                          "--no-progress"])
    bidl = to_bidl(torch.load(work / "best.pth", weights_only=True))
    bidl["state_dict"] = {f"module.{k}": v for k, v in bidl["state_dict"].items()}
    torch.save(bidl, tmp_path / "bidl_best.pth")
    res = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(tmp_path / "bidl_best.pth"), "--split", "val",
                         "--no-progress"])
    assert res["accuracy_top-1"] == ours["accuracy_top-1"] and res["accuracy_top-5"] == ours["accuracy_top-5"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_ctrl_c_leaves_a_usable_latest_checkpoint(tiny, tmp_path, sig, code):
    """Ctrl-C or SIGTERM to the process group (the trainer and its 2 loader workers, as a terminal or a batch
    scheduler sends it): exit status 130 either way (SIGTERM stops as Ctrl-C) and a latest.pth that resumes."""
    cfg_path, _, _ = tiny
    work = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "bidl_models.train", "--config", str(cfg_path), "--work-dir",
                             str(work), "--no-progress", "--no-tensorboard", "--threads", "1", "--workers", "2",
                             "--cfg-options", "runner.max_epochs=50"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (work / "latest.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (work / "latest.pth").exists(), proc.communicate()[0]
    time.sleep(0.5)                                                          # now inside epoch 2
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out
    assert "interrupted at epoch" in out and f"by {signal.Signals(sig).name}: saved" in out
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["interrupted"] is True and ck["epoch"] >= 1 and "optimizer" in ck
    pos = ck["meta"]["position"]
    assert ck["meta"]["iter"] == 6 * ck["epoch"] + pos["inner_iter"] and 0 <= pos["inner_iter"] < 6
    bare = build_backbone(load_config(cfg_path).model.backbone.to_dict())
    load_weights(bare, read_state_dict(work / "latest.pth"))
    # --resume continues where the signal stopped it: the validation it interrupted (if it came there), the
    # rest of that epoch, then one more
    r = run_train(cfg_path, work, "--resume", "--cfg-options", f"runner.max_epochs={ck['epoch'] + 2}")
    pending = ck["meta"]["val_pending"]
    assert [h["epoch"] for h in r["history"]] == [ck["epoch"]] * pending + [ck["epoch"] + 1, ck["epoch"] + 2]
    assert not pending or (r["history"][0]["train"] is None and r["history"][0]["val"] is not None)
    first = json_log(Path(r["json_log"]).parent, "train")
    assert first and all(t["epoch"] >= 1 for t in first)


@pytest.mark.slow
def test_ddp_with_torchrun_on_cpu(tiny, tmp_path):
    """Two gloo processes: rank 0 writes one checkpoint set; validation gathers both shards in order."""
    cfg_path, _, _ = tiny
    work = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "bidl_models.train", "--config", str(cfg_path), "--work-dir", str(work),
                          "--no-progress", "--no-tensorboard", "--device", "cpu"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "world size 2" in out.stdout and "3 iters/epoch of 8" in out.stdout    # 48 samples / 2 ranks / 8
    assert len(list(work.glob("*.log.json"))) == 1
    best = torch.load(work / "best.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in best["state_dict"])
    res = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                         "--no-progress"])
    assert res["accuracy_top-1"] == pytest.approx(best["meta"]["val"]["accuracy_top-1"])


def test_other_frame_counts_train_as_bidl_with_one_warning_line(tiny, tmp_path):
    """T=6 frames for timestep=5: BIDL sums the steps given and divides by timestep; one warning line in
    the log (the model's, once for training and validation)."""
    cfg_path, _, _ = tiny
    r = run_train(cfg_path, tmp_path / "a", "--max-iters", "1", "--cfg-options", "model.backbone.timestep=5")
    assert r["iters_run"] == 1 and r["stopped"] == "max_iters"
    text = next((tmp_path / "a").glob("*.log")).read_text()
    assert text.count("input has T=6 time steps but model.backbone.timestep=5") == 1, text


def test_bad_input_is_named(tiny, tmp_path):
    cfg_path, _, _ = tiny
    with pytest.raises(ValueError, match=r"data.train: .*\[C, H, W\]=\[2, 24, 24\] per step but the model expects "
                                         r"\[2, 32, 24\]"):
        run_train(cfg_path, tmp_path / "b", "--cfg-options", "model.backbone.h0=32")
    with pytest.raises(ValueError, match=r"models_compile_inputshape\[0\]=\[1, 2, 40, 40\] does not match"):
        run_train(cfg_path, tmp_path / "c", "--cfg-options", "models_compile_inputshape=[[1,2,40,40]]")
    with pytest.raises(FileNotFoundError, match=r"data.train: DvsMnist data_prefix='/nonexistent/dvsmnist/train/'"):
        run_train(cfg_path, tmp_path / "d", "--cfg-options",
                  "data.train={'type': 'DvsMnist', 'data_prefix': '/nonexistent/dvsmnist/train/'}")
    with pytest.raises(FileNotFoundError, match="checkpoint '.*missing.pth': no such file"):
        test_cli.run(["--config", str(cfg_path), "--checkpoint", str(tmp_path / "missing.pth"), "--no-progress"])


def test_fp16_and_section_keys():
    assert fp16_loss_scale(dict(loss_scale=512.0)) == 512.0
    assert fp16_loss_scale(None) is None and fp16_loss_scale(dict(loss_scale="dynamic")) is None
    with pytest.raises(ValueError, match=r"fp16: unexpected key\(s\) \['scale'\]; accepted keys: \['loss_scale'\]"):
        fp16_loss_scale(dict(scale=512.0))
    with pytest.raises(ValueError, match=r"fp16.loss_scale=-1: expected a positive number"):
        fp16_loss_scale(dict(loss_scale=-1))
    with pytest.raises(ValueError, match=r"runner: unexpected key\(s\) \['max_epoch'\]"):
        check_sections(dict(runner=dict(type="EpochBasedRunner", max_epoch=3)))
    with pytest.raises(ValueError, match=r"data: unexpected key\(s\) \['sample_per_gpu'\]"):
        check_sections(dict(data=dict(sample_per_gpu=3, train={})))
    check_sections(load_config("resnetlif18-itout-b20x4-16-jester"))   # BIDL's keys pass


@pytest.mark.slow   # 13-27 s on 2 cores
def test_demo_weights_reach_the_stated_accuracy():
    """The shipped weights on the first 200 test samples of DvsGlyphs (about 10 s on one core)."""
    assert DEMO_WEIGHTS.is_file(), f"{DEMO_WEIGHTS} is missing"
    assert DEMO_WEIGHTS.stat().st_size < 10 * 2 ** 20
    meta = torch.load(DEMO_WEIGHTS, weights_only=True)["meta"]
    torch.set_num_threads(1)
    cfg = load_config(DEMO_CONFIG)
    res = test_cli.evaluate_checkpoint(cfg, DEMO_WEIGHTS, device="cpu", limit=200, progress=False)
    assert res["accuracy_top-1"] >= 95.0
    assert res["accuracy_top-1"] == pytest.approx(meta["test_top1_first200"], abs=1.0)
    assert meta["test_top1"] >= 95.0 and meta["test_samples"] == 1000


# ------------------------------------------------------------------------------- one-logit (binary) head, tokens

@BACKBONES.register()
class TinyTokenLogit(torch.nn.Module):
    """A one-logit stand-in for BIDL's FastText (IMDB): token ids ``[B, T]`` -> embedding, averaged over the
    steps -> ``Linear(dim, 1)``. Declares its input as FastText should: one int64 token per step."""

    input_shape = ()
    input_dtype = "int64"

    def __init__(self, timestep: int = 12, vocab_size: int = 20, embedding_dim: int = 8, nclass: int = 1):
        super().__init__()
        self.timestep = timestep
        self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        self.fc = torch.nn.Linear(embedding_dim, nclass)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(x).mean(1))


TOKENS = """
model = dict(type='ImageClassifier', neck=None, backbone=dict(type='TinyTokenLogit', timestep=12, nclass=1),
             head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5)))
dataset_type = 'imdb'
pipeline = [dict(type='ToTensor', keys=['img', 'gt_label']), dict(type='Collect', keys=['img', 'gt_label'])]
data = dict(samples_per_gpu=16, workers_per_gpu=0,
            train=dict(data_prefix='{root}/train_x.npy', ann_file='{root}/train_y.npy', pipeline=pipeline),
            val=dict(data_prefix='{root}/val_x.npy', ann_file='{root}/val_y.npy', pipeline=pipeline),
            test=dict(data_prefix='{root}/val_x.npy', ann_file='{root}/val_y.npy', pipeline=pipeline))
optimizer = dict(type='Adam', lr=0.1)
lr_config = dict(policy='MultiStepLR', milestones=[10])
runner = dict(type='EpochBasedRunner', max_epochs=8)
log_config = dict(interval=3)
"""


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """IMDB-like token files (BIDL's pre_imdb.py layout): label 1 where token 3 occurs more often than token 4."""
    import numpy as np
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    for split, n in (("train", 96), ("val", 48)):
        x = rng.integers(0, 20, size=(n, 12)).astype(np.int64)
        y = ((x == 3).sum(1) > (x == 4).sum(1)).astype(np.int64)
        np.save(root / f"{split}_x.npy", x)
        np.save(root / f"{split}_y.npy", y)
    cfg = root / "tokens-b16.py"
    cfg.write_text(TOKENS.replace("{root}", str(root)))
    return cfg


def test_a_one_logit_head_trains_with_a_binary_loss_and_accuracy(tokens, tmp_path, capsys):
    import numpy as np
    r = run_train(tokens, tmp_path / "w")
    hist = r["history"]
    assert hist[-1]["train"]["loss"] < 0.8 * hist[0]["train"]["loss"]          # it learns (binary CE on the logit)
    assert hist[-1]["val"]["accuracy_top-1"] >= 85.0       # 89.6% measured; the majority class is 70.8%
    assert all(h["val"]["accuracy_top-5"] == 100.0 for h in hist)               # k > 2 classes counts every sample
    # the binary accuracy and loss, recomputed by hand from the checkpoint's logits
    cfg = load_config(tokens)
    model = build_classifier(cfg.model.to_dict())
    model.load_state_dict(torch.load(tmp_path / "w" / "latest.pth", weights_only=True)["state_dict"])
    model.eval()
    x = torch.from_numpy(np.load(tokens.parent / "val_x.npy"))
    y = torch.from_numpy(np.load(tokens.parent / "val_y.npy"))
    with torch.no_grad():
        s = model(x)
    assert s.shape == (48, 1)
    acc = 100.0 * float(((s[:, 0] > 0).long() == y).float().mean())
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(s[:, 0], y.float()))
    assert hist[-1]["val"]["accuracy_top-1"] == pytest.approx(acc)
    assert hist[-1]["val"]["loss"] == pytest.approx(bce, rel=1e-5)
    # the test CLI: the same numbers under the same names, printed and in its JSON
    res = test_cli.run(["--config", str(tokens), "--checkpoint", str(tmp_path / "w" / "latest.pth"),
                         "--no-progress", "--out", str(tmp_path / "r.json")])
    assert res["accuracy_top-1"] == pytest.approx(acc) and res["loss"] == pytest.approx(bce, rel=1e-5)
    assert res["timestep"] == 12
    out = capsys.readouterr().out
    assert f"accuracy_top-1 {acc:.2f}%" in out and f"loss {bce:.4f}" in out
    val_line = json_log(tmp_path / "w")[-1]
    metric_keys = {k for k in val_line if k.startswith("accuracy_") or k == "loss"}
    assert metric_keys == {"accuracy_top-1", "accuracy_top-5", "loss"}
    assert metric_keys <= set(json.loads((tmp_path / "r.json").read_text()))   # one naming scheme


def test_token_samples_follow_the_models_declared_input(tokens, tmp_path):
    float_pipe = ("data.train.pipeline=[{'type': 'ToTensorType', 'keys': ['img'], 'dtype': 'float32'}, "
                  "{'type': 'ToTensor', 'keys': ['gt_label']}, {'type': 'Collect', 'keys': ['img', 'gt_label']}]")
    with pytest.raises(ValueError, match=r"data.train: samples of .*train_x.npy' are float32 \[12\] but model.backbone "
                                         r"type='TinyTokenLogit' reads integer token ids"):
        run_train(tokens, tmp_path / "a", "--cfg-options", float_pipe)
    from bidl_models.model_input import input_kind
    assert input_kind(TinyTokenLogit()) == "int"
    assert input_kind(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Embedding(4, 2))) == "int"   # undeclared
    assert input_kind(build_backbone(dict(type="SeqClif3Fc3DmItout", timestep=2, c0=2, h0=16, w0=16))) == "float"
    half = torch.nn.Linear(2, 2)
    half.input_dtype = "float16"
    assert input_kind(half) == "float"
    half.input_dtype = "floaty"
    with pytest.raises(ValueError, match=r"Linear.input_dtype='floaty': not a torch dtype name"):
        input_kind(half)


def test_frames_must_be_float_for_a_frame_model(tiny, tmp_path):
    cfg_path, _, _ = tiny
    uint8 = ("data.train.pipeline=[{'type': 'ToTensor', 'keys': ['img', 'gt_label']}, "
             "{'type': 'Collect', 'keys': ['img', 'gt_label']}]")
    with pytest.raises(ValueError, match=r"data.train: samples of .* are uint8 \[6, 2, 24, 24\] but model.backbone "
                                         r"type='SeqClif3Fc3DmItout' takes float input; add dict\(type='ToTensorType'"):
        run_train(cfg_path, tmp_path / "a", "--cfg-options", uint8)
    with pytest.raises(ValueError, match=r"sample 0 of .* has img shape \[6, 2, 24, 24\]; expected \[T\] for "
                                         r"model.backbone type='TinyTokenLogit'"):
        run_train(cfg_path, tmp_path / "b", "--cfg-options", "model.backbone={'type': 'TinyTokenLogit'}")


def test_data_root_is_honoured_by_train_and_test(tiny, tmp_path):
    """BIDL's data.data_root reaches the datasets that read from it (here DvsMnist's frame cache)."""
    cfg_path, work, _ = tiny
    opts = ["data.data_root=/nonexistent/bidl_root", "data.train={'type': 'DvsMnist', 'frames_number': 6}",
            "data.test={'type': 'DvsMnist', 'frames_number': 6}"]
    with pytest.raises(FileNotFoundError, match=r"data.train: DvsMnist: .*/nonexistent/bidl_root/DvsMnist/"):
        run_train(cfg_path, tmp_path / "a", "--cfg-options", *opts)
    with pytest.raises(FileNotFoundError, match=r"data.test: DvsMnist: .*/nonexistent/bidl_root/DvsMnist/"):
        test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--no-progress",
                       "--cfg-options", *opts])
    own = opts[:1] + ["data.train={'type': 'DvsMnist', 'frames_number': 6, 'data_root': '/elsewhere'}"]
    with pytest.raises(FileNotFoundError, match=r"data.train: DvsMnist: .*/elsewhere/DvsMnist/"):   # its own wins
        run_train(cfg_path, tmp_path / "b", "--cfg-options", *own)


def test_amp_bf16_trains_on_cpu_and_fp16_stays_cuda_only(tiny, tmp_path):
    """``--amp bf16``: autocast in bf16 (CPU too), no loss scaler; ``--amp`` / BIDL's ``fp16`` key mean fp16,
    which falls back to fp32 off CUDA with a log line."""
    cpu = torch.device("cpu")
    assert amp_dtype("bf16", cpu) is torch.bfloat16 and amp_dtype("fp16", cpu) is None
    assert amp_dtype(True, torch.device("cuda")) is torch.float16 and amp_dtype(None, cpu) is None
    with pytest.raises(ValueError, match="--amp 'fp8'"):
        amp_dtype("fp8", cpu)
    cfg_path, _, _ = tiny
    work = tmp_path / "bf16"
    summary = run_train(cfg_path, work, "--amp", "bf16", "--device", "cpu")
    assert summary["epochs"] == 1
    log_text = next(work.glob("*.log")).read_text()
    assert "amp bf16" in log_text
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert "scaler" not in ck and all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    fp = run_train(cfg_path, tmp_path / "fp16", "--amp", "--device", "cpu")
    assert fp["epochs"] == 1
    assert "training in fp32" in next((tmp_path / "fp16").glob("*.log")).read_text()
    # the test CLI evaluates in bf16 on CPU too: same accuracy within a sample or two
    res32 = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "latest.pth"), "--split", "val",
                           "--device", "cpu", "--no-progress"])
    res16 = test_cli.run(["--config", str(cfg_path), "--checkpoint", str(work / "latest.pth"), "--split", "val",
                           "--device", "cpu", "--amp", "bf16", "--no-progress"])
    assert abs(res16["accuracy_top-1"] - res32["accuracy_top-1"]) <= 100 * 2 / res32["samples"]


# ------------------------------------------------------------------------------- a BIDL user's workflow

SMALL = ["data.train.num_samples=16", "data.val.num_samples=8"]          # 2 iterations per epoch


def test_max_iters_makes_a_short_run_that_resume_continues(tiny, tmp_path):
    """--max-iters N stops after global iteration N mid-epoch, saving a resumable latest.pth, the curves and
    the log; the resumed run reports only what it did, and --max-epochs sets the epochs."""
    cfg_path, _, _ = tiny
    work = tmp_path / "w"
    r = run_train(cfg_path, work, "--max-iters", "4")
    assert r["stopped"] == "max_iters" and r["iters_run"] == 4 and r["epochs_run"] == 0 and r["history"] == []
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["stopped"] == "max_iters" and ck["meta"]["interrupted"] is False
    assert ck["meta"]["position"]["inner_iter"] == 4 and ck["meta"]["iter"] == 4 and "rng" in ck
    assert (work / "curves.png").is_file()
    text = next(work.glob("*.log")).read_text()
    assert "stopped at epoch 1 iteration 4/6 (global iteration 4): --max-iters 4 reached" in text
    assert "done: 0 epochs (4 iterations) in " in text
    again = run_train(cfg_path, work, "--resume", "--max-epochs", "2")
    assert again["stopped"] is None and again["epochs"] == 2 and again["epochs_run"] == 2 and again["iters_run"] == 8
    assert [h["epoch"] for h in again["history"]] == [1, 2]
    log2 = sorted(work.glob("*.log"))[-1].read_text()
    assert ("done: 2 epochs (8 iterations) in " in log2 and "resumed at epoch 1 iteration 4/6; the model has "
            "trained 2 epochs (12 iterations) in all" in log2), log2
    at_end = run_train(cfg_path, tmp_path / "x", "--max-iters", "2", "--max-epochs", "3", "--cfg-options", *SMALL)
    assert at_end["stopped"] == "max_iters" and at_end["epochs"] == 1 and (tmp_path / "x" / "epoch_1.pth").is_file()
    assert "epoch 1/3 (iter 2)" in next((tmp_path / "x").glob("*.log")).read_text()     # --max-epochs 3
    with pytest.raises(ValueError, match=r"--max-iters 0: expected an int >= 1"):
        run_train(cfg_path, tmp_path / "y", "--max-iters", "0")


def test_sigterm_stops_like_ctrl_c(tiny, tmp_path, capsys, monkeypatch):
    """A batch scheduler's SIGTERM: the iteration ends, latest.pth (with the position), curves.png and the
    log are written, then Stopped (exit status 130 from the CLI, as Ctrl-C)."""
    cfg_path, _, _ = tiny
    work = tmp_path / "w"
    before = signal.getsignal(signal.SIGTERM)   # SIG_DFL, or what an earlier in-process ray.init left

    def term(tr, info):
        if info["iter"] == 2:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Stopped) as exc:
        run_train(cfg_path, work, callbacks=[term])
    assert exc.value.signum == signal.SIGTERM and exc.value.exit_code == 130
    assert signal.getsignal(signal.SIGTERM) is before                  # the handler is given back
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["interrupted"] is True and ck["meta"]["stopped"] == "SIGTERM" and ck["meta"]["iter"] == 3
    assert (work / "curves.png").is_file()
    text = next(work.glob("*.log")).read_text()
    assert "interrupted at epoch 1 iteration 3/6 (global iteration 3) by SIGTERM: saved" in text
    r = run_train(cfg_path, work, "--resume")
    assert r["iters_run"] == 3 and [h["epoch"] for h in r["history"]] == [1]
    monkeypatch.setattr(train_cli, "run", lambda argv=None: (_ for _ in ()).throw(Stopped(signal.SIGTERM)))
    assert train_cli.main([]) == 130
    assert "stopped by SIGTERM: latest.pth saved" in capsys.readouterr().err


def test_synthetic_data_trains_and_tests_without_files(tmp_path, capsys):
    """--synthetic: seeded random input of the model's shape for train and test (BIDL's clif7fc1dg_it config,
    which has no model.type, shrunk), and the file each command loaded is printed first."""
    name = "clif7fc1dg_it-b16x1-dvsgesture"
    opts = ["--cfg-options", "model.backbone.timestep=2", "data.samples_per_gpu=2", "data.data_root=/nonexistent"]
    r = run_train(name, tmp_path / "w", "--synthetic", "4", "--max-iters", "1", *opts)
    out = capsys.readouterr().out
    assert out.startswith(f"config: {load_config(name).filename} (a Python file: it ran when loaded)\n")
    assert "--synthetic: training on synthetic data.train (4 seeded random event frames [T=2, 2, 128, 128]" in out
    assert r["iters_run"] == 1
    res = test_cli.run(["--config", name, "--checkpoint", str(tmp_path / "w" / "latest.pth"), "--synthetic", "3",
                             "--no-progress", *opts])
    assert res["samples"] == 3 and res["timestep"] == 2
    with pytest.raises(FileNotFoundError) as err:
        run_train(name, tmp_path / "v", *opts)
    msg = str(err.value)
    assert msg.startswith("data.train: DvsGesture: data not found; expected BIDL's frame cache "
                          "/nonexistent/DvsGesture/frames_number_2_split_by_number/")
    assert msg.endswith("; or run with --synthetic (seeded random input of the model's shape, no data files needed)")
    with pytest.raises(ValueError, match=r"config: missing data.test \(data: None\); give it, or run with --synthetic"):
        test_cli.run(["--config", name, "--checkpoint", str(tmp_path / "w" / "latest.pth"), "--no-progress",
                           "--cfg-options", "data=None"])


def test_checkpoint_names_resolve_as_bidls_test_py(tiny, tmp_path, monkeypatch, capsys):
    """--checkpoint NAME: the working directory, --work-dir, BIDL's weight_files/classification/<model folder>/
    <lif|lifplus>/ (from a checkout or its tools/), work_dirs/<config name>/; a miss lists every place tried."""
    from bidl_models.checkpoint import resolve_checkpoint
    cfg_path, work, _ = tiny
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tools").mkdir()
    for name, neuron in (("clif3fc3dm_itout-b16x1-dvsmnist", "lif"),
                         ("clifplus3fc3dm_itout-b16x1-dvsmnist", "lifplus")):
        cfg = load_config(name)
        with pytest.raises(FileNotFoundError) as miss:
            resolve_checkpoint("latest.pth", cfg)
        bidl = Path("weight_files/classification/clif3fc3dm") / neuron / "latest.pth"
        assert str(miss.value) == (f"--checkpoint 'latest.pth': no such file; looked for latest.pth, {bidl}, "
                                   f"work_dirs/{name}/latest.pth")
        bidl.parent.mkdir(parents=True)
        bidl.write_bytes(b"x")
        assert resolve_checkpoint("latest.pth", cfg) == bidl
        monkeypatch.chdir(tmp_path / "tools")
        assert resolve_checkpoint("latest.pth", cfg) == Path("..") / bidl
        monkeypatch.chdir(tmp_path)
    own = Path("work_dirs/tiny-glyphs/best.pth")
    own.parent.mkdir(parents=True)
    own.write_bytes((work / "best.pth").read_bytes())
    res = test_cli.run(["--config", str(cfg_path), "--checkpoint", "best.pth", "--split", "val", "--no-progress"])
    assert f"checkpoint: {own}\n" in capsys.readouterr().out and res["samples"] == 24
    assert resolve_checkpoint("best.pth", load_config(cfg_path), work_dir=work) == work / "best.pth"
