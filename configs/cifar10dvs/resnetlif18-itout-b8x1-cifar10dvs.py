# ResNetLifItout depth 18 on CIFAR10-DVS (2x128x128, T=10, 10 classes).
_base_ = ['../_base_/default_runtime.py', '../_base_/schedule_sgd_cos.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNetLifItout', timestep=10, depth=18, nclass=10, down_t=[1, 'avg'],
                  input_channels=2, noise=1e-5, soma_params='channel_share', cmode='spike'),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

dataset_type = 'Cifar10Dvs'
train_pipeline = [
    dict(type='RandomCropVideo', size=128, padding=8),
    dict(type='RandomFlipVideo', flip_ratio=0.5, direction='horizontal'),
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
    dict(type='ToTensor', keys=['gt_label']),
    dict(type='Collect', keys=['img', 'gt_label']),
]
test_pipeline = [
    dict(type='ToTensorType', keys=['img'], dtype='float32'),
    dict(type='Collect', keys=['img']),
]
data = dict(
    samples_per_gpu=8,
    workers_per_gpu=2,
    train=dict(type=dataset_type, data_prefix='data/cifar10dvs/train', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='data/cifar10dvs/test', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='data/cifar10dvs/test', pipeline=test_pipeline, test_mode=True),
)
models_compile_inputshape = [[1, 2, 128, 128]]  # per-step input shape of the (single) model
runner = dict(type='EpochBasedRunner', max_epochs=100)
