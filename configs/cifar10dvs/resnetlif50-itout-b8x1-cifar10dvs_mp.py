# ResNetLifItout depth 50 on CIFAR10-DVS, cut into two model segments (model parallelism).
_base_ = ['./resnetlif50-itout-b8x1-cifar10dvs.py']

# dim 0: number of model segments; dim 1: per-step input shape of each segment.
models_compile_inputshape = [[1, 2, 128, 128], [1, 512, 16, 16]]

_segment = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNetLifItout_MP', timestep=10, depth=50, nclass=10, down_t=[1, 'avg'],
                  input_channels=2, noise=1e-5, soma_params='channel_share', cmode='spike'),
    neck=None,
    head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, loss_weight=1.0),
              topk=(1, 5), cal_acc=True),
)
model_0 = dict(_segment, backbone=dict(_segment['backbone'], split=[0, 6]))    # stem + blocks 0..5
model_1 = dict(_segment, backbone=dict(_segment['backbone'], split=[6, 16]))   # blocks 6..15 + head

# lynxi_devices = [[0,1],[2,3],[4,5],[6,7],[8,9],[10,11],[12,13],[14,15],[16,17],[18,19],[20,21],[22,23]]
lynxi_devices = [[0, 1]]
