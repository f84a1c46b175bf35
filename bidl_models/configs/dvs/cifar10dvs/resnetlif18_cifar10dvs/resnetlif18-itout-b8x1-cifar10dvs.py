# BIDL's resnetlif18-itout-b8x1-cifar10dvs: ResNetLifItout depth 18 (spike LIF) on CIFAR10-DVS, 2x128x128,
# T=10, 10 classes, time-sliced over two devices.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNetLifItout',
        timestep=10,
        h=128, w=128,
        depth=18, nclass=10,
        down_t=[1, 'avg'],
        input_channels=2,
        noise=0,
        soma_params='all_share',
        cmode='spike',
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5), cal_acc=True),
)

# ---- data
dataset_type = 'Cifar10Dvs'
train_pipeline = [
    dict(type='ToTensorType', keys=[0], dtype='float32'),
]
test_pipeline = [
    dict(type='ToTensorType', keys=[0], dtype='float32'),
]
data = dict(
    samples_per_gpu=8,
    workers_per_gpu=0,
    data_root='./data',
    train=dict(pipeline=train_pipeline),
    val=dict(pipeline=test_pipeline),
    test=dict(pipeline=test_pipeline),
)

# ---- schedule
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='CosineAnnealingLR', T_max=40, eta_min=0)
runner = dict(type='EpochBasedRunner', max_epochs=100)

# ---- runtime
checkpoint_config = dict(interval=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = None

# lynxi_devices: dim 0 = time slices (grid rows), dim 1 = model segments (columns), values = device ids;
# e.g. [[0, 1], [2, 3], [4, 5]]: 3 time slices x 2 segments on devices 0..5.
lynxi_devices = [[0], [1]]
