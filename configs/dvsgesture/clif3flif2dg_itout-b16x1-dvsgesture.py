# SeqClif3Flif2DgItout on DVS128 Gesture (2x40x40, T=60, 11 classes).
_base_ = ['../_base_/default_runtime.py', '../_base_/schedule_sgd_cos.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(type='SeqClif3Flif2DgItout', timestep=60, c0=2, h0=40, w0=40, nclass=11,
                  cmode='spike', amode='mean', noise=0, soma_params='all_share',
                  neuron='lif', neuron_config=None),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

dataset_type = 'DvsGesture'
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
    train=dict(type=dataset_type, data_prefix='data/dvsgesture/train', pipeline=train_pipeline),
    val=dict(type=dataset_type, data_prefix='data/dvsgesture/test', pipeline=test_pipeline, test_mode=True),
    test=dict(type=dataset_type, data_prefix='data/dvsgesture/test', pipeline=test_pipeline, test_mode=True),
)
optimizer = dict(_delete_=True, type='Adam', lr=1e-3, weight_decay=1e-4)
runner = dict(type='EpochBasedRunner', max_epochs=50)
