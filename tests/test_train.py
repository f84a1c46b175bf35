"""The train and test CLIs on a tiny generated dataset, resume, Ctrl-C, bad input, the demo weights."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bidl_models import train as train_cli
from bidl_models import test as test_cli
from bidl_models.backbones import build_backbone
from bidl_models.checkpoint import load_weights, read_state_dict, to_bidl
from bidl_models.classifier import build_classifier
from bidl_models.config import REPO_CONFIGS, load_config
from bidl_models.datasets import build_dataset

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


def run_train(cfg: Path, work: Path, *extra: str, tensorboard: bool = False) -> dict:
    torch.set_num_threads(1)
    flags = [] if tensorboard else ["--no-tensorboard"]
    return train_cli.main(["--config", str(cfg), "--work-dir", str(work), "--no-progress", *flags, *extra])


def json_log(work: Path) -> list[dict]:
    lines = []
    for f in sorted(work.glob("*.log.json")):
        lines += [json.loads(ln) for ln in f.read_text().splitlines()]
    return lines


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
    assert [r["epoch"] for r in rec] == [1] and "val_accuracy_top-1" in rec[0]


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
    run_train(cfg_path, resumed, "--resume-from", str(first / "latest.pth"), "--cfg-options", *sched,
              "runner.max_epochs=2")
    rec = json_log(resumed)
    assert [r["epoch"] for r in rec] == [2] and rec[0]["iter"] == 12
    assert rec[0]["train_lr"] == pytest.approx(1e-3)                   # the schedule continued from epoch 1
    ck = torch.load(resumed / "latest.pth", weights_only=True)
    assert ck["epoch"] == 2 and ck["scheduler"]["last_iter"] == 11
    straight = tmp_path / "straight"
    run_train(cfg_path, straight, "--cfg-options", *sched, "runner.max_epochs=2")
    rec2 = json_log(straight)
    assert [r["epoch"] for r in rec2] == [1, 2]
    assert rec2[1]["train_loss"] == pytest.approx(rec[0]["train_loss"], rel=1e-5)
    ck2 = torch.load(straight / "latest.pth", weights_only=True)
    for k, v in ck2["state_dict"].items():
        assert torch.allclose(v.float(), ck["state_dict"][k].float(), atol=1e-6), k


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
    trainer = train_cli.Trainer(load_config(cfg_path), args)
    got = trainer.model.backbone.state_dict()
    assert all(torch.equal(got[k], sd[k]) for k in sd) and list(got) == list(sd)
    torch.save({"state_dict": {k: v for k, v in sd.items() if k != "head.2.bias"}}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"load_from .*bad.pth' does not match .*missing keys: head\.2\.bias"):
        train_cli.Trainer(load_config(cfg_path), train_cli.parse_args(
            ["--config", str(cfg_path), "--work-dir", str(tmp_path / "w2"), "--load-from", str(tmp_path / "bad.pth")]))


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
    run_train(cfg_path, tmp_path / "w")
    rec = json_log(tmp_path / "w")
    # 6 iterations per epoch; warmup over iterations 0..3 (0.05 * (1 - (1 - i/4) * 0.9)), then the rate it
    # left until MultiStepLR steps at the end of epoch 1 (x 0.1), as BIDL's loop does
    assert [r["epoch"] for r in rec] == [1, 2]
    assert rec[0]["train_lr"] == pytest.approx(0.05 * (1 - 0.25 * 0.9))
    assert rec[1]["train_lr"] == pytest.approx(0.05 * (1 - 0.25 * 0.9) * 0.1)
    log_text = next((tmp_path / "w").glob("*.log")).read_text()
    assert "AMP requested but the device is cpu" in log_text
    ck = torch.load(tmp_path / "w" / "latest.pth", weights_only=True)
    assert ck["scheduler"]["torch"]["last_epoch"] == 2 and ck["config"]["data"]["train"]["type"] == "DvsGlyphs"


def test_test_cli_reproduces_the_checkpoint_accuracy(tiny, capsys, tmp_path):
    cfg_path, work, _ = tiny
    best = torch.load(work / "best.pth", weights_only=True)
    want = best["meta"]["val"]
    res = test_cli.main(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                         "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r.json")])
    assert res["accuracy_top-1"] == pytest.approx(want["accuracy_top-1"])
    assert res["accuracy_top-5"] == pytest.approx(want["accuracy_top-5"])
    assert res["samples"] == 24 and res["frames_per_s"] > 0 and res["timestep"] == 6
    assert "time-step frames/s" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["accuracy_top-1"] == res["accuracy_top-1"]
    odd = test_cli.main(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                         "--batch-size", "5", "--no-progress", "--export-to", str(tmp_path / "w.pth")])
    assert odd["accuracy_top-1"] == res["accuracy_top-1"] and odd["batch_size"] == 5   # any batch size
    exported = torch.load(tmp_path / "w.pth", weights_only=True)
    assert "optimizer" not in exported and exported["meta"]["test_top1"] == res["accuracy_top-1"]
    assert exported["meta"]["test_top1_first200"] == pytest.approx(res["accuracy_top-1"])   # 24 < 200 samples
    bare = build_backbone(load_config(cfg_path).model.backbone.to_dict())
    load_weights(bare, read_state_dict(tmp_path / "w.pth"))


def test_test_cli_takes_bidl_checkpoints(tiny, tmp_path):
    cfg_path, work, _ = tiny
    ours = test_cli.main(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                          "--no-progress"])
    bidl = to_bidl(torch.load(work / "best.pth", weights_only=True))
    bidl["state_dict"] = {f"module.{k}": v for k, v in bidl["state_dict"].items()}
    torch.save(bidl, tmp_path / "bidl_best.pth")
    res = test_cli.main(["--config", str(cfg_path), "--checkpoint", str(tmp_path / "bidl_best.pth"), "--split", "val",
                         "--no-progress"])
    assert res["accuracy_top-1"] == ours["accuracy_top-1"] and res["accuracy_top-5"] == ours["accuracy_top-5"]


@pytest.mark.slow
def test_ctrl_c_leaves_a_usable_latest_checkpoint(tiny, tmp_path):
    cfg_path, _, _ = tiny
    work = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "bidl_models.train", "--config", str(cfg_path), "--work-dir",
                             str(work), "--no-progress", "--no-tensorboard", "--threads", "1", "--cfg-options",
                             "runner.max_epochs=50"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (work / "latest.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (work / "latest.pth").exists(), proc.communicate()[0]
    time.sleep(0.5)                                                          # now inside epoch 2
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted at epoch" in out
    ck = torch.load(work / "latest.pth", weights_only=True)
    assert ck["meta"]["interrupted"] is True and ck["epoch"] >= 1 and "optimizer" in ck
    bare = build_backbone(load_config(cfg_path).model.backbone.to_dict())
    load_weights(bare, read_state_dict(work / "latest.pth"))


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
    res = test_cli.main(["--config", str(cfg_path), "--checkpoint", str(work / "best.pth"), "--split", "val",
                         "--no-progress"])
    assert res["accuracy_top-1"] == pytest.approx(best["meta"]["val"]["accuracy_top-1"])


def test_bad_input_is_named(tiny, tmp_path):
    cfg_path, _, _ = tiny
    with pytest.raises(ValueError, match=r"data.train: samples of .* have T=6 frames but model.backbone.timestep=5"):
        run_train(cfg_path, tmp_path / "a", "--cfg-options", "model.backbone.timestep=5")
    with pytest.raises(ValueError, match=r"data.train: .*\[C, H, W\]=\[2, 24, 24\] per step but the model expects "
                                         r"\[2, 32, 24\]"):
        run_train(cfg_path, tmp_path / "b", "--cfg-options", "model.backbone.h0=32")
    with pytest.raises(ValueError, match=r"models_compile_inputshape\[0\]=\[1, 2, 40, 40\] does not match"):
        run_train(cfg_path, tmp_path / "c", "--cfg-options", "models_compile_inputshape=[[1,2,40,40]]")
    with pytest.raises(FileNotFoundError, match=r"data.train: DvsMnist data_prefix='/nonexistent/dvsmnist/train/'"):
        run_train(cfg_path, tmp_path / "d", "--cfg-options",
                  "data.train={'type': 'DvsMnist', 'data_prefix': '/nonexistent/dvsmnist/train/'}")
    with pytest.raises(FileNotFoundError, match="checkpoint '.*missing.pth': no such file"):
        test_cli.main(["--config", str(cfg_path), "--checkpoint", str(tmp_path / "missing.pth"), "--no-progress"])


def test_fp16_and_section_keys():
    assert train_cli.fp16_loss_scale(dict(loss_scale=512.0)) == 512.0
    assert train_cli.fp16_loss_scale(None) is None and train_cli.fp16_loss_scale(dict(loss_scale="dynamic")) is None
    with pytest.raises(ValueError, match=r"fp16: unexpected key\(s\) \['scale'\]; accepted keys: \['loss_scale'\]"):
        train_cli.fp16_loss_scale(dict(scale=512.0))
    with pytest.raises(ValueError, match=r"fp16.loss_scale=-1: expected a positive number"):
        train_cli.fp16_loss_scale(dict(loss_scale=-1))
    with pytest.raises(ValueError, match=r"runner: unexpected key\(s\) \['max_epoch'\]"):
        train_cli.check_sections(dict(runner=dict(type="EpochBasedRunner", max_epoch=3)))
    with pytest.raises(ValueError, match=r"data: unexpected key\(s\) \['sample_per_gpu'\]"):
        train_cli.check_sections(dict(data=dict(sample_per_gpu=3, train={})))
    train_cli.check_sections(load_config("resnetlif18-itout-b20x4-16-jester"))   # BIDL's keys pass


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
