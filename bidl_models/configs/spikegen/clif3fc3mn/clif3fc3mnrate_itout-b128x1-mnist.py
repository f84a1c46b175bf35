# BIDL's clif3fc3mnrate_itout-b128x1-mnist: SeqClif3Fc3DmItout (spike) on MNIST, rate code (Bernoulli of the pixel intensity), 1x28x28, T=20, 10 classes.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Fc3DmItout',
        timestep=20, input_channels=1, h=28, w=28, nclass=10,
        cmode='spike', amode='mean', noise=0, soma_params='all_share',
        neuron='lif',
        neuron_config=None,
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

# ---- data: MNIST idx files (BIDL's data/MNIST/raw), each image encoded into spikes
dataset_type = 'MNIST'
train_pipeline = [
    dict(type='Resize', size=(28, 28)),
    dict(type='Rate', time_steps=20),
    dict(type='ToTensor', keys=['gt_label']),
]
test_pipeline = [
    dict(type='Resize', size=(28, 28)),
    dict(type='Rate', time_steps=20),
]
data = dict(
    samples_per_gpu=128,
    workers_per_gpu=2,
    train=dict(type=dataset_type, data_prefix='./data/MNIST/raw/', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='./data/MNIST/raw/', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='./data/MNIST/raw/', pipeline=test_pipeline, test_mode=True),
)

# ---- schedule
optimizer = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001)
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
fp16 = None
