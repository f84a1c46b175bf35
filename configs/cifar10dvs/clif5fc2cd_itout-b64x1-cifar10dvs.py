# SeqClif5Fc2CdItout on CIFAR10-DVS (2x128x128, T=10, 10 classes).
_base_ = ['../_base_/default_runtime.py', '../_base_/schedule_sgd_cos.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(type='SeqClif5Fc2CdItout', timestep=10, c0=2, h0=128, w0=128, nclass=10,
                  cmode='spike', amode='mean', noise=0, soma_params='all_share',
                  neuron='lif', neuron_config=None),
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
    samples_per_gpu=64,
    workers_per_gpu=2,
    train=dict(type=dataset_type, data_prefix='data/cifar10dvs/train', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='data/cifar10dvs/test', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='data/cifar10dvs/test', pipeline=test_pipeline, test_mode=True),
)
runner = dict(type='EpochBasedRunner', max_epochs=100)
