# ResNetLifItout depth 50 on CIFAR10-DVS, time-sliced over devices (one segment).
_base_ = ['./resnetlif18-itout-b8x1-cifar10dvs.py']

model = dict(backbone=dict(depth=50))

# dim 0: time slices; dim 1: model segments; values: device ids.
# e.g. lynxi_devices = [[0, 1], [2, 3], [4, 5]]: 3 time slices x 2 segments on devices 0..5.
# lynxi_devices = [[0],[1],[2],[3],[4],[5],[6],[7],[8],[9],[10],[11],[12],[13],[14],[15],[16],[17],[18],[19],[20],[21],[22],[23]]
lynxi_devices = [[0], [1]]
