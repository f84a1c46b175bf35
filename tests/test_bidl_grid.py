"""End to end: a config in BIDL's dialect and a checkpoint in BIDL's format, compiled and run on the
3x2 grid through the public API (compile.compile_config, bidl_runtime.api.stream); the grid's outputs
equal the single-device run of the same artifacts bit for bit and BIDL's logits of the checkpoint."""
from __future__ import annotations

import pytest
import torch

from bidl_models import load_model
from bidl_models.config import load_config
from bidl_runtime.api import stream
from bidl_runtime.runtime_config import RuntimeConfig
from compile import compile_config

from bidl_reference import seq_forward

pytestmark = pytest.mark.slow

# BIDL's public-repository dialect, as its clif3fc3dm file, shrunk to 2x16x16 and T=5 for speed
CONFIG = """
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Fc3DmItout',
        timestep=5, input_channels=2, h=16, w=16, nclass=10, cmode='analog', amode='mean', noise=0,
        soma_params='all_share', neuron='lif', neuron_config=None),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True))
dataset_type = 'DvsMnist'
train_pipeline = [dict(type='ToTensorType', keys=['img'], dtype='float32')]
test_pipeline = [dict(type='ToTensorType', keys=['img'], dtype='float32')]
data = dict(samples_per_gpu=16, workers_per_gpu=2, data_root='{{ fileDirname }}/no-data',
            train=dict(pipeline=train_pipeline), val=dict(pipeline=test_pipeline), test=dict(pipeline=test_pipeline))
optimizer = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001, nesterov=True)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[10, 16])
warmup = dict(warmup_ratio=1e-2, warmup_iters=500)
runner = dict(type='EpochBasedRunner', max_epochs=20)
checkpoint_config = dict(interval=1)
log_config = dict(interval=100, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
lynxi_devices = [[0, 1], [2, 3], [4, 5]]
"""


def bidl_checkpoint(path, cfg):
    """BIDL's tools/train.py file of a GPU-trained model: module. keys, optimizer and scheduler states."""
    net = load_model(cfg, seed=11)
    g = torch.Generator().manual_seed(5)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            v = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            v = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("norm.weight"):
            v = 1.0 + 0.3 * torch.randn(v.shape, generator=g)
        elif k.endswith("lif.theta"):
            v = torch.tensor(0.4)
        sd[k] = v
    torch.save(dict(state_dict={f"module.{k}": v for k, v in sd.items()}, optimizer_state_dict=None,
                    scheduler_stat_dict=None, epoch=19, time="2024-05-01 12:00:00", iters=500, seed=0,
                    config=path.stem), path)
    return sd


def test_bidl_config_and_checkpoint_on_the_3x2_grid(ray_local, tmp_path):
    cfg_path = tmp_path / "clif3fc3dm_itout-b16x1-tiny.py"
    cfg_path.write_text(CONFIG)
    cfg = load_config(cfg_path)
    ckpt = tmp_path / "latest.pth"
    sd = bidl_checkpoint(ckpt, cfg)
    cm = compile_config(cfg, ckpt, grid="3x2", out=tmp_path / "artifacts", progress=False, verbose=False)
    assert cm.rows == 3 and cm.n_segments == 2 and cm.row_chunks == [2, 2, 1]
    g = torch.Generator().manual_seed(9)
    xs = [(torch.rand(5, 2, 16, 16, generator=g) < 0.3).float() for _ in range(4)]
    report = stream(cfg, [(x, 0) for x in xs], grid=(3, 2), rcfg=RuntimeConfig(metrics=False), checkpoint=ckpt,
                    artifacts=tmp_path / "runtime", verify=True)
    assert report.verify == {"equal": 4, "compared": 4, "max_abs_diff": 0.0}
    assert report.plan.slices == (2, 2, 1) and len(report.plan.cells) == 6
    batch = torch.stack(xs)                                             # [B, T, C, H, W]
    want = seq_forward(sd, batch, "SeqClif3Fc3DmItout", "analog")       # BIDL's forward of its checkpoint
    got = torch.cat([report.outputs[i] for i in range(4)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.std() > 0
