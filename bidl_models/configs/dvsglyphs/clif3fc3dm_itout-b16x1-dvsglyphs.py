# SeqClif3Fc3DmItout on DvsGlyphs, the generated moving-digit DVS dataset (2x40x40, T=20, 10 classes):
# needs no download. The default model of `python -m bidl_runtime.run`; its trained weights ship as
# bidl_models/weights/clif3fc3dm_itout-b16x1-dvsglyphs.pth.
_base_ = ['../_base_/default_runtime.py', '../_base_/schedule_sgd_cos.py']

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='SeqClif3Fc3DmItout', timestep=20, c0=2, h0=40, w0=40, nclass=10,
        cmode='analog', amode='mean', noise=0, soma_params='all_share',
        neuron='lif', neuron_config=None,
    ),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)

dataset_type = 'DvsGlyphs'
glyphs = dict(type=dataset_type, timestep=20, size=(40, 40), num_classes=10, seed=0)
train_pipeline = [
    dict(type='RandomCropVideo', size=40, padding=3),
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
    workers_per_gpu=1,
    train=dict(**glyphs, split='train', num_samples=4000, pipeline=train_pipeline),
    val=dict(**glyphs, split='test', num_samples=1000, pipeline=test_pipeline, test_mode=True),
    test=dict(**glyphs, split='test', num_samples=1000, pipeline=test_pipeline, test_mode=True),
)

optimizer = dict(_delete_=True, type='Adam', lr=1e-3, weight_decay=0)
optimizer_config = dict(grad_clip=dict(max_norm=10.0))
lr_config = dict(policy='CosineAnnealing', min_lr=1e-5, by_epoch=False,
                 warmup='linear', warmup_iters=50, warmup_ratio=0.1)
runner = dict(type='EpochBasedRunner', max_epochs=3)
evaluation = dict(interval=1, metric='accuracy')

models_compile_inputshape = [[1, 2, 40, 40]]
