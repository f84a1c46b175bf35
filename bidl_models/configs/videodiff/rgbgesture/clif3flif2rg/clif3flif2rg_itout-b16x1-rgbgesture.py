# BIDL's clif3flif2rg_itout-b16x1-rgbgesture: SeqClif3Flif2DgItout on RGB-Gesture (frame-difference
# events, 2x40x40, T=60, 11 classes), noise 1e-3.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Flif2DgItout',
        timestep=60, input_channels=2, h=40, w=40, nclass=11,
        cmode='spike', fmode='spike', amode='mean', noise=1e-3, soma_params='all_share',
        neuron='lif',
        neuron_config=None,
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

# ---- data
dataset_type = 'RgbGesture'
train_pipeline = [
    dict(type='RandomCropVideoDict', size=40, padding=4),
    dict(type='ToTensorTypeDict', keys=['img'], dtype='float32'),
    dict(type='ToTensor', keys=['gt_label']),
]
test_pipeline = [
    dict(type='ToTensorTypeDict', keys=['img'], dtype='float32'),
]
data = dict(
    samples_per_gpu=16,
    workers_per_gpu=1,
    train=dict(type=dataset_type, data_prefix='./data/rgbgesture/', ann_file='train.pkl', shape=(40, 40),
               pipeline=train_pipeline, test_mode=False),
    val=dict(type=dataset_type, data_prefix='./data/rgbgesture/', ann_file='val.pkl', shape=(40, 40),
             pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='./data/rgbgesture/', ann_file='val.pkl', shape=(40, 40),
              pipeline=test_pipeline, test_mode=True),
)

# ---- schedule
optimizer = dict(type='Adam', lr=0.001, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[20, 40, 60, 80])
runner = dict(type='EpochBasedRunner', max_epochs=50)

# ---- runtime
checkpoint_config = dict(interval=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
