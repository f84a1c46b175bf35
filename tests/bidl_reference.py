"""An independent, functional statement of BIDL's GPU forward pass (eval mode), written from the facts
in the reference (bidl_zoo.md, the user guide), working directly on a BIDL state_dict.

It shares no code with ``bidl_models``: the tests compare ``bidl_models.load_model(cfg, ckpt)(x)``
with it, so a layout or naming difference between the two shows up as different logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def bn(x: Tensor, sd: dict, p: str) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def lif(x: Tensor, v: Tensor, sd: dict, p: str, mode: str, state_bn: bool) -> tuple[Tensor, Tensor]:
    """BIDL's Lif cell ``p`` (``p.alpha``...): U = X + V; U = BN(U); F = 1[U - theta > 0]; R; V."""
    u = x + v
    if state_bn:
        u = bn(u, sd, f"{p}.norm")
    fire = (u - sd[f"{p}.theta"] > 0).float()
    r = fire * sd[f"{p}.v_0"] + (1.0 - fire) * u
    v = sd[f"{p}.alpha"] * r + sd[f"{p}.beta"]
    return (fire if mode == "spike" else torch.relu(u)), v


def seq_forward(sd: dict, x: Tensor, arch: str, cmode: str, fmode: str = "spike") -> Tensor:
    """``x[B, T, C, H, W]`` -> logits of BIDL's Seq* backbones (sum over steps / T)."""
    T = x.shape[1]
    convs = {"SeqClif3Fc3DmItout": [(1, 1, "after")] * 3,
             "SeqClif5Fc2CdItout": [(2, 2, "after")] + [(1, 1, "after")] * 4,
             "SeqClif7Fc1CdItout": [(1, 1, "inside")] * 7,
             "SeqClif3Flif2DgItout": [(2, 1, None)] * 3}[arch]
    v: dict = {}
    out = 0.0
    for t in range(T):
        h = x[:, t]
        if arch == "SeqClif3Flif2DgItout":
            h = bn(h, sd, "norm")
        for i, (stride, pad, pool) in enumerate(convs, 1):
            p = f"clif{i}"
            c = F.conv2d(h, sd[f"{p}.p0.weight"], sd[f"{p}.p0.bias"], stride, pad)
            if pool == "inside":
                c = F.max_pool2d(c, 2, 2)
            h, v[p] = lif(c, v.get(p, 0.0), sd, f"{p}.lif", cmode, True)
            if pool == "after":
                h = F.max_pool2d(h, 2, 2)
        h = h.flatten(1)
        if arch == "SeqClif3Flif2DgItout":
            for p in ("flif1", "flif2"):
                c = F.linear(h, sd[f"{p}.p0.weight"], sd[f"{p}.p0.bias"])
                h, v[p] = lif(c, v.get(p, 0.0), sd, f"{p}.lif", fmode, True)
        elif arch == "SeqClif7Fc1CdItout":
            h = F.linear(h, sd["fc.weight"], sd["fc.bias"])
        else:
            n = len([k for k in sd if k.startswith("head.") and k.endswith(".weight")])
            for j in range(n):
                h = F.linear(h, sd[f"head.{2 * j}.weight"], sd[f"head.{2 * j}.bias"])
                if j < n - 1:
                    h = torch.relu(h)
        out = out + h / T
    return out


def _conv_bn(h: Tensor, sd: dict, p: str, stride: int, pad: int) -> Tensor:
    return bn(F.conv2d(h, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], stride, pad), sd, f"{p}.1")


def resnet_forward(sd: dict, x: Tensor, depth: int, cmode: str, norm: dict | None = None) -> Tensor:
    """BIDL's ResNetLifItout GPU path, with its state reset per sample: the temporal mean of the
    global-average-pooled features, then ``fc``."""
    stages = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    T = x.shape[1]
    v: dict = {}
    feats = 0.0

    def cell(h, p):
        y, v[p] = lif(h, v.get(p, 0.0), sd, f"{p}.lif", cmode, False)
        return y

    for t in range(T):
        h = x[:, t]
        if norm is not None:
            h = (h - torch.tensor(norm["mean"]).view(1, -1, 1, 1)) / torch.tensor(norm["std"]).view(1, -1, 1, 1)
        h = cell(_conv_bn(h, sd, "conv", 2, 3), "lif")
        h = F.max_pool2d(h, 3, 2, 1)
        for i, n in enumerate(stages, 1):
            for j in range(n):
                p = f"layer{i}.{j}"
                stride = 2 if (i > 1 and j == 0) else 1
                if bottleneck:
                    y = cell(_conv_bn(h, sd, f"{p}.conv1", 1, 0), f"{p}.lif1")
                    y = cell(_conv_bn(y, sd, f"{p}.conv2", stride, 1), f"{p}.lif2")
                    y = _conv_bn(y, sd, f"{p}.conv3", 1, 0)
                    last = f"{p}.lif3"
                else:
                    y = cell(_conv_bn(h, sd, f"{p}.conv1", stride, 1), f"{p}.lif1")
                    y = _conv_bn(y, sd, f"{p}.conv2", 1, 1)
                    last = f"{p}.lif2"
                if f"{p}.downsample.1.weight" in sd:
                    idn = F.avg_pool2d(h, stride, stride, ceil_mode=True, count_include_pad=False)
                    idn = bn(F.conv2d(idn, sd[f"{p}.downsample.1.weight"], sd[f"{p}.downsample.1.bias"]), sd,
                             f"{p}.downsample.2")
                else:
                    idn = h
                h = cell(y + idn, last)
        feats = feats + F.adaptive_avg_pool2d(h, 1).flatten(1) / T
    return F.linear(feats, sd["fc.weight"], sd["fc.bias"])
