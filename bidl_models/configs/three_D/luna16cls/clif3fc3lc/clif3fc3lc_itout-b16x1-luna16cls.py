# BIDL's clif3fc3lc_itout-b16x1-luna16cls: SeqClif3Fc3LcItout (analog) on LUNA16 nodule crops,
# 1x32x32, T=8 (the 8 slices are the time axis), 2 classes.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Fc3LcItout',
        timestep=8, input_channels=1, h=32, w=32, nclass=2,
        cmode='analog', amode='mean', noise=0, soma_params='all_share',
        neuron='lif',
        neuron_config=None,
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

# ---- data: BIDL's prepared LUNA16 crops (one .npy [8, 32, 32] per nodule, label = first character)
dataset_type = 'Luna16Cls32'
train_pipeline = [
    dict(type='ToTensorTypeDict', keys=['img'], dtype='float32'),
    dict(type='ToTensor', keys=['gt_label']),
]
test_pipeline = [
    dict(type='ToTensorTypeDict', keys=['img'], dtype='float32'),
]
data = dict(
    samples_per_gpu=16,
    workers_per_gpu=2,
    train=dict(type=dataset_type, data_prefix='./data/luna16/train3/', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='./data/luna16/test3/', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='./data/luna16/test3/', pipeline=test_pipeline, test_mode=True),
)

# ---- schedule
optimizer = dict(type='SGD', lr=0.03, momentum=0.9, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[10, 16])
warmup = dict(warmup_ratio=1e-2, warmup_iters=500)
runner = dict(type='EpochBasedRunner', max_epochs=20)

# ---- runtime
checkpoint_config = dict(interval=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
