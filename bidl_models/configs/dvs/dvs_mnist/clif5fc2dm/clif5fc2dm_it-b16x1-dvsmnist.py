# BIDL's clif5fc2dm_it-b16x1-dvsmnist: SeqClif5Fc2DmIt (analog) on DVS-MNIST,
# 2x128x128, T=20, 10 classes. it_batch is BIDL's; any batch runs here.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif5Fc2DmIt',
        timestep=20, input_channels=2, h=128, w=128, nclass=10,
        cmode='analog', amode='mean', noise=0, soma_params='all_share',
        neuron='lif',
        neuron_config=None,
        it_batch=16,
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

# ---- data (data.* without 'type': dataset_type applies)
dataset_type = 'DvsMnist'
train_pipeline = [
    dict(type='RandomCropVideo', size=128, padding=4),
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
]
test_pipeline = [
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
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)
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
