# BIDL's clif3fc3dm_itout-b16x1-dvsmnist (public repository dialect): SeqClif3Fc3DmItout on DVS-MNIST,
# 2x40x40, T=20, 10 classes. The user guide's spelling of the same model: clif3fc3dm_itout-b16x1-dvsmnist_guide.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Fc3DmItout',
        timestep=20, input_channels=2, h=40, w=40, nclass=10,
        cmode='analog', amode='mean', noise=0, soma_params='all_share',
        neuron='lif',          # 'lif' or 'lifplus'
        neuron_config=None,    # 'lifplus': [input_accum, rev_volt, fire_refrac, spike_init, trig_current, memb_decay]
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

# ---- data (data.* without 'type': dataset_type applies)
dataset_type = 'DvsMnist'
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
    workers_per_gpu=2,
    data_root='./data',
    train=dict(pipeline=train_pipeline),
    val=dict(pipeline=test_pipeline),
    test=dict(pipeline=test_pipeline),
)

# ---- schedule
optimizer = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001, nesterov=True)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[10, 16])
warmup = dict(warmup_ratio=1e-2, warmup_iters=500)
runner = dict(type='EpochBasedRunner', max_epochs=20)

# ---- runtime
checkpoint_config = dict(interval=1)
log_config = dict(interval=100, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
