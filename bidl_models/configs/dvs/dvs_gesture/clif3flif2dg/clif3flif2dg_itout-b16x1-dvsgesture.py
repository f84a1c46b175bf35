# BIDL's clif3flif2dg_itout-b16x1-dvsgesture: SeqClif3Flif2DgItout (spike convs, spike FcLif logits) on
# DVS128 Gesture resized to 2x40x40, T=60, 11 classes.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Flif2DgItout',
        timestep=60, input_channels=2, h=40, w=40, nclass=11,
        cmode='spike', fmode='spike', amode='mean', noise=0,
        soma_params='all_share',
        neuron='lif',
        neuron_config=None,
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, 5), cal_acc=True),
)

# ---- data
dataset_type = 'DvsGesture'
train_pipeline = [
    dict(type='ResizeDVS', size=40),
    dict(type='RandomCropVideo', size=40, padding=4),
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
]
test_pipeline = [
    dict(type='ResizeDVS', size=40),
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
]
data = dict(
    samples_per_gpu=16,
    workers_per_gpu=0,
    data_root='./data',
    train=dict(pipeline=train_pipeline),
    val=dict(pipeline=test_pipeline),
    test=dict(pipeline=test_pipeline),
)

# ---- schedule
optimizer = dict(type='Adam', lr=0.001, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[60, 90])
runner = dict(type='EpochBasedRunner', max_epochs=100)

# ---- runtime
checkpoint_config = dict(interval=1)
log_config = dict(interval=20, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
