# The user guide's clif3fc3dm_itout-b16x1-dvsmnist (its dialect: c0/h0/w0, mmcv lr_config), self-contained as
# the guide prints it. Same network as clif3fc3dm_itout-b16x1-dvsmnist (BIDL's public-repository file).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Fc3DmItout', timestep=20, c0=2, h0=40, w0=40, nclass=10,
        cmode='analog', amode='mean', noise=0, soma_params='all_share',
        neuron='lif',          # 'lif' or 'lifplus'
        neuron_config=None,    # 'lifplus': [input_accum, rev_volt, fire_refrac, spike_init, trig_current, memb_decay]
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

dataset_type = 'DvsMnist'
train_pipeline = [
    dict(type='RandomCropVideo', size=40, padding=4),
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
    dict(type='ToTensor', keys=['gt_label']),
    dict(type='Collect', keys=['img', 'gt_label']),
]
test_pipeline = [
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
    dict(type='Collect', keys=['img']),
]
data = dict(
    samples_per_gpu=16,
    workers_per_gpu=2,
    train=dict(type=dataset_type, data_prefix='data/dvsmnist/train/', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='data/dvsmnist/val/', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='data/dvsmnist/test/', pipeline=test_pipeline, test_mode=True),
)

optimizer = dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='CosineAnnealing', min_lr=0)
runner = dict(type='EpochBasedRunner', max_epochs=40)

checkpoint_config = dict(interval=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
