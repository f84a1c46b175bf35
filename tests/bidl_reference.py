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


def lifplus(x: Tensor, st: dict, sd: dict, p: str, mode: str) -> tuple[Tensor, dict]:
    """BIDL's LIF+ with neuron_config [1, False, 0, 0, 0, 0] (COBE, the shipped configs' only one),
    as its code computes it: g = (1 - eps) g + x (g starts at 1); U = x + tau (g + v_0 - V);
    U = BN(U); F = 1[U - theta > 0]; R = F v_0 + (1 - F) U; V = alpha R + beta; analog out tanh(U)."""
    eps, tau, v0 = sd[f"{p}.epsilon"], sd[f"{p}.tau_recip"], sd[f"{p}.v_0"]
    g = (1.0 - eps) * st.get("g", 1.0) + x
    u = x + tau * (g + v0 - st.get("v", 0.0))
    u = bn(u, sd, f"{p}.norm")
    fire = (u - sd[f"{p}.theta"] > 0).float()
    r = fire * v0 + (1.0 - fire) * u
    v = sd[f"{p}.alpha"] * r + sd[f"{p}.beta"]
    return (fire if mode == "spike" else torch.tanh(u)), {"g": g, "v": v}


def cell(x: Tensor, v: dict, sd: dict, p: str, mode: str, state_bn: bool = True) -> Tensor:
    """The neuron of layer ``p`` (LIF or LIF+, as its keys say), its state in ``v[p]``."""
    if f"{p}.lifplus.theta" in sd:
        y, v[p] = lifplus(x, v.get(p, {}), sd, f"{p}.lifplus", mode)
    else:
        y, v[p] = lif(x, v.get(p, 0.0), sd, f"{p}.lif", mode, state_bn)
    return y


CONVS = {"3fc3": [(1, 1, "after")] * 3, "5fc2": [(2, 2, "after")] + [(1, 1, "after")] * 4,
         "7inside": [(1, 1, "inside")] * 7, "7after": [(1, 1, "after")] * 7, "3flif2": [(2, 1, None)] * 3}
ARCH = {"SeqClif3Fc3DmItout": "3fc3", "SeqClif3Fc3LcItout": "3fc3", "SeqClifplus3Fc3DmItout": "3fc3",
        "SeqClifplus3Fc3LcItout": "3fc3", "SeqClif3Fc3DmIt": "3fc3",
        "SeqClif5Fc2CdItout": "5fc2", "SeqClif5Fc2DmItout": "5fc2", "SeqClifplus5Fc2CdItout": "5fc2",
        "SeqClif5Fc2CdIt": "5fc2", "SeqClif5Fc2DmIt": "5fc2",
        "SeqClif7Fc1CdItout": "7inside", "SeqClif7Fc1DgItout": "7inside", "SeqClif7Fc1DgIt": "7inside",
        "SeqClif7Fc1CdIt": "7after",
        "SeqClif3Flif2DgItout": "3flif2", "SeqClifplus3Flifplus2DgItout": "3flif2"}


def seq_forward(sd: dict, x: Tensor, arch: str, cmode: str, fmode: str = "spike") -> Tensor:
    """``x[B, T, C, H, W]`` -> logits of BIDL's Seq* backbones: itout (``*Itout``: the head per step,
    sum over steps / T) or It (``*It``: the features' mean over T, then the head)."""
    T = x.shape[1]
    convs = CONVS[ARCH[arch]]
    it = arch.endswith("It")
    v: dict = {}
    out, feats = 0.0, 0.0
    for t in range(T):
        h = x[:, t]
        if "norm.weight" in sd:
            h = bn(h, sd, "norm")
        for i, (stride, pad, pool) in enumerate(convs, 1):
            p = f"clif{i}"
            c = F.conv2d(h, sd[f"{p}.p0.weight"], sd[f"{p}.p0.bias"], stride, pad)
            if pool == "inside":
                c = F.max_pool2d(c, 2, 2)
            h = cell(c, v, sd, p, cmode)
            if pool == "after":
                h = F.max_pool2d(h, 2, 2)
        h = h.flatten(1)
        if it:
            feats = feats + h / T
        else:
            out = out + _seq_head(sd, h, v, fmode) / T
    return _seq_head(sd, feats, v, fmode) if it else out


def _seq_head(sd: dict, h: Tensor, v: dict, fmode: str) -> Tensor:
    if "flif1.p0.weight" in sd:
        for p in ("flif1", "flif2"):
            h = cell(F.linear(h, sd[f"{p}.p0.weight"], sd[f"{p}.p0.bias"]), v, sd, p, fmode)
        return h
    if "fc.weight" in sd:
        return F.linear(h, sd["fc.weight"], sd["fc.bias"])
    n = len([k for k in sd if k.startswith("head.") and k.endswith(".weight")])
    for j in range(n):
        h = F.linear(h, sd[f"head.{2 * j}.weight"], sd[f"head.{2 * j}.bias"])
        if j < n - 1:
            h = torch.relu(h)
    return h


def fasttext_forward(sd: dict, tokens: Tensor, cmode: str = "analog") -> Tensor:
    """``tokens[B, T]`` -> BIDL's FastText logit ``[B, 1]`` of the last step: embedding, FcLif (or
    FcLifPlus), dropout (identity in eval), ``fc``."""
    v: dict = {}
    y = None
    for t in range(tokens.shape[1]):
        e = sd["embedding.weight"][tokens[:, t].long()]
        h = cell(F.linear(e, sd["lif.p0.weight"], sd["lif.p0.bias"]), v, sd, "lif", cmode)
        y = F.linear(h, sd["fc.weight"], sd["fc.bias"])
    return y


def attention_vgg_forward(sd: dict, x: Tensor, cmode: str = "spike") -> Tensor:
    """``x[B, T, C, H, W]`` -> BIDL's AttentionVGGNet logits, layer by layer over the whole sequence
    (each sample attended on its own): AvgPool(34, 2); conv-BN-LIF x 8 with AvgPool(2) after every
    second; temporal-wise attention after conv4 and conv8, TCJA before the latter; fc per step, mean."""
    B, T = x.shape[:2]

    def seq(fn, h):
        return torch.stack([fn(h[:, t]) for t in range(T)], 1)

    def twa(h, p):
        a = h.flatten(2).mean(-1)                                       # [B, T]
        s = torch.sigmoid(F.linear(torch.relu(F.linear(a, sd[f"{p}.sharedMLP.0.weight"])),
                                   sd[f"{p}.sharedMLP.2.weight"]))
        return h * s[:, :, None, None, None]

    def tcja(h):
        z = h.mean((-2, -1))                                            # [B, T, C]
        a = F.conv1d(z, sd["tcja.conv_t.weight"], padding=1)
        b = F.conv1d(z.transpose(1, 2), sd["tcja.conv_c.weight"], padding=1).transpose(1, 2)
        return h * torch.sigmoid(a * b)[..., None, None]

    h = seq(lambda f: F.avg_pool2d(f, 34, 2), x)
    for i in range(1, 9):
        p = f"conv{i}"
        c = seq(lambda f: bn(F.conv2d(f, sd[f"{p}.conv.weight"], sd[f"{p}.conv.bias"], 1, 1), sd, f"{p}.bn"), h)
        v, outs = 0.0, []
        for t in range(T):
            o, v = lif(c[:, t], v, sd, f"{p}.lif.lif", cmode, False)
            outs.append(o)
        h = torch.stack(outs, 1)
        if i == 4:
            h = twa(h, "twa1")
        if i == 8:
            h = twa(tcja(h), "twa2")
        if i % 2 == 0:
            h = seq(lambda f: F.avg_pool2d(f, 2, 2), h)
    logits = seq(lambda f: F.linear(f.flatten(1), sd["fc.1.weight"], sd["fc.1.bias"]), h)
    return logits.mean(1)


def _conv_bn(h: Tensor, sd: dict, p: str, stride: int, pad: int) -> Tensor:
    return bn(F.conv2d(h, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"], stride, pad), sd, f"{p}.1")


def resnet_forward(sd: dict, x: Tensor, depth: int, cmode: str, norm: dict | None = None, lite: bool = False) -> Tensor:
    """BIDL's ResNetLifItout GPU path, with its state reset per sample: the temporal mean of the
    global-average-pooled features, then ``fc``. ``lite``: ResNetLifReluItout (a neuron only after
    conv1 of each stage's first block, ReLU everywhere else). ResNetLif (It) keys (``.module.``) are
    read as the same network's."""
    sd = {k.replace(".module.", "."): v for k, v in sd.items()}
    stages = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    T = x.shape[1]
    v: dict = {}
    feats = 0.0

    def cell(h, p):
        y, v[p] = lif(h, v.get(p, 0.0), sd, f"{p}.lif", cmode, False)
        return y

    def act(h, p, spiking):
        return cell(h, p) if spiking else torch.relu(h)

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
                first_spikes = not lite or j == 0      # lite: only lif1 of a stage's first block spikes
                if bottleneck:
                    y = act(_conv_bn(h, sd, f"{p}.conv1", 1, 0), f"{p}.lif1", first_spikes)
                    y = act(_conv_bn(y, sd, f"{p}.conv2", stride, 1), f"{p}.lif2", not lite)
                    y = _conv_bn(y, sd, f"{p}.conv3", 1, 0)
                    last = f"{p}.lif3"
                else:
                    y = act(_conv_bn(h, sd, f"{p}.conv1", stride, 1), f"{p}.lif1", first_spikes)
                    y = _conv_bn(y, sd, f"{p}.conv2", 1, 1)
                    last = f"{p}.lif2"
                if f"{p}.downsample.1.weight" in sd:
                    idn = F.avg_pool2d(h, stride, stride, ceil_mode=True, count_include_pad=False)
                    idn = bn(F.conv2d(idn, sd[f"{p}.downsample.1.weight"], sd[f"{p}.downsample.1.bias"]), sd,
                             f"{p}.downsample.2")
                else:
                    idn = h
                h = act(y + idn, last, not lite)
        feats = feats + F.adaptive_avg_pool2d(h, 1).flatten(1) / T
    return F.linear(feats, sd["fc.weight"], sd["fc.bias"])
