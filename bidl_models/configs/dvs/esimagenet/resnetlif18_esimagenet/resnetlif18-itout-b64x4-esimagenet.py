# BIDL's resnetlif18-itout-b64x4-esimagenet: ResNetLifItout depth 18 (analog) on ES-ImageNet,
# 2x224x224, T=8, 1000 classes.

# ---- model
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNetLifItout',
        timestep=8, h=224, w=224, input_channels=2,
        depth=18, nclass=1000,
        down_t=[1, 'avg'],
        noise=0,
        soma_params='all_share',
        cmode='analog',
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

# ---- data: ES-ImageNet (csv of <file>,<label> + one .npz [C, T, H, W] per sample, read by LoadNumpy)
dataset_type = 'ESImagenet'
train_pipeline = [
    dict(type='LoadNumpy'),
    dict(type='ToTensorTypeDict', keys=['img'], dtype='float32'),
    dict(type='ToTensor', keys=['gt_label']),
]
test_pipeline = [
    dict(type='LoadNumpy'),
    dict(type='ToTensorTypeDict', keys=['img'], dtype='float32'),
]
data = dict(
    samples_per_gpu=16,
    workers_per_gpu=1,
    train=dict(type=dataset_type, data_prefix='./data/ES-imagenet-0.18/train/',
               ann_file='./data/ES-imagenet-0.18/trainlabel.csv', pipeline=train_pipeline, test_mode=False),
    val=dict(type=dataset_type, data_prefix='./data/ES-imagenet-0.18/val/',
             ann_file='./data/ES-imagenet-0.18/vallabel.csv', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='./data/ES-imagenet-0.18/val/',
              ann_file='./data/ES-imagenet-0.18/vallabel.csv', pipeline=test_pipeline, test_mode=True),
)

# ---- schedule
optimizer = dict(type='SGD', lr=0.03, momentum=0.9, weight_decay=0.0001)
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='MultiStepLR', milestones=[30, 60, 90])
runner = dict(type='EpochBasedRunner', max_epochs=25)

# ---- runtime
checkpoint_config = dict(interval=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
fp16 = dict(loss_scale=512.0)
