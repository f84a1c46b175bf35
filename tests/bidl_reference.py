"""An independent, functional statement of BIDL's GPU forward pass, written from the facts in the
reference (bidl_zoo.md, the user guide), working directly on a BIDL state_dict.

It shares no code with ``bidl_models``: the tests compare ``bidl_models.load_model(cfg, ckpt)(x)``
with it, so a layout or naming difference between the two shows up as different logits.

Eval mode with a plain dict of tensors; train mode with a :class:`TrainState` (bidl_zoo.md, "How
BatchNorm sees time in training"): every BatchNorm normalises with the statistics of the tensor it is
called on and updates its running statistics (momentum 0.1, ``num_batches_tracked`` + 1) each call.
Itout models call each layer once per time step on ``[B, ...]``; the It models' ``TimeDistributed``
conv/BN run once on all ``T*B`` frames; a BatchNorm on the membrane state is called per step in both.
Spikes have BIDL's rectangle surrogate gradient (width 1 around theta).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class TrainState(dict):
    """A state_dict for a train-mode pass: its parameters are leaf tensors (gradients land in them), its
    BatchNorm buffers copies that every call updates in place; ``noise``: the LIF training noise."""

    training = True
    noise = 0.0


class _Rectangle(torch.autograd.Function):
    """Heaviside ``1[z > 0]`` with BIDL's surrogate ``dF/dz = 1[|z| < 0.5]``."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return g * (z.abs() < 0.5).to(g.dtype)


def fire_of(z: Tensor) -> Tensor:
    return _Rectangle.apply(z)


def bn(x: Tensor, sd: dict, p: str) -> Tensor:
    if getattr(sd, "training", False):
        sd[f"{p}.num_batches_tracked"].add_(1)
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], True, 0.1, 1e-5)
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, 1e-5)


def per_frame(fn, h: Tensor, together: bool) -> Tensor:
    """A stateless op on every step of ``h[B, T, ...]``: once per step (itout) or, ``together``, once on
    all frames flattened t-major to ``[T*B, ...]`` (BIDL's It ``TimeDistributed``)."""
    if not together:
        return torch.stack([fn(h[:, t]) for t in range(h.shape[1])], 1)
    B, T = h.shape[:2]
    return fn(h.transpose(0, 1).flatten(0, 1)).unflatten(0, (T, B)).transpose(0, 1)


def lif(x: Tensor, v: Tensor, sd: dict, p: str, mode: str, state_bn: bool) -> tuple[Tensor, Tensor]:
    """BIDL's Lif cell ``p`` (``p.alpha``...): U = X + V; U = BN(U); F = 1[U - theta > 0]; R; V."""
    u = x + v
    if state_bn:
        u = bn(u, sd, f"{p}.norm")
    u0 = u
    noise = getattr(sd, "noise", 0.0)
    if noise:                      # training: N(0, 1) * unbiased std over the dims after [B, C] * noise
        with torch.no_grad():
            std = u.std(dim=tuple(range(2, u.dim())), keepdim=True) if u.dim() > 2 else u.std()
            n = noise * std * torch.randn_like(u)
        u = u + n
    fire = fire_of(u - sd[f"{p}.theta"])
    r = fire * sd[f"{p}.v_0"] + (1.0 - fire) * u
    v = sd[f"{p}.alpha"] * r + sd[f"{p}.beta"]
    return (fire if mode == "spike" else torch.relu(u0)), v


def lifplus(x: Tensor, st: dict, sd: dict, p: str, mode: str) -> tuple[Tensor, dict]:
    """BIDL's LIF+ with neuron_config [1, False, 0, 0, 0, 0] (COBE, the shipped configs' only one),
    as its code computes it: g = (1 - eps) g + x (g starts at 1); U = x + tau (g + v_0 - V);
    U = BN(U); F = 1[U - theta > 0]; R = F v_0 + (1 - F) U; V = alpha R + beta; analog out tanh(U)."""
    eps, tau, v0 = sd[f"{p}.epsilon"], sd[f"{p}.tau_recip"], sd[f"{p}.v_0"]
    g = (1.0 - eps) * st.get("g", 1.0) + x
    u = x + tau * (g + v0 - st.get("v", 0.0))
    u = bn(u, sd, f"{p}.norm")
    fire = fire_of(u - sd[f"{p}.theta"])
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


def seq_forward(sd: dict, x: Tensor, arch: str, cmode: str, fmode: str = "spike",
                timestep: int | None = None) -> Tensor:
    """``x[B, T, C, H, W]`` -> logits of BIDL's Seq* backbones: itout (``*Itout``: the head per step,
    sum over steps / ``timestep``, default T) or It (``*It``: the features' mean over the T steps, then
    the head). Its only BatchNorms (on the input, on the states) are called per step in both modes."""
    T = x.shape[1]
    divisor = T if timestep is None else timestep
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
            if f"{p}.norm.weight" in sd:                 # norm_state=False: BN on the current
                c = bn(c, sd, f"{p}.norm")
            h = cell(c, v, sd, p, cmode, state_bn=f"{p}.lif.norm.weight" in sd)
            if pool == "after":
                h = F.max_pool2d(h, 2, 2)
        h = h.flatten(1)
        if it:
            feats = feats + h / T
        else:
            out = out + _seq_head(sd, h, v, fmode) / divisor
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
        return per_frame(fn, h, together=True)     # BIDL's It model: all frames at once

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


def resnet_forward(sd: dict, x: Tensor, depth: int, cmode: str, norm: dict | None = None, lite: bool = False,
                   timestep: int | None = None) -> Tensor:
    """BIDL's ResNetLifItout GPU path, with its state reset per sample: the pooled features summed over
    the steps and divided by ``timestep`` (default T), then ``fc``. ``lite``: ResNetLifReluItout (a
    neuron only after conv1 of each stage's first block, ReLU everywhere else). ResNetLif (It) keys
    (``.module.``) are read as the same network's, run as BIDL's It model: ``TimeDistributed`` conv/BN
    on all frames at once and the mean of the features over the T steps given.

    Written layer by layer over the whole sequence (equal to a loop over steps outside: a layer's
    output at step t depends on its inputs up to t only, and every BatchNorm sees its calls in step order)."""
    together = any(".module." in k for k in sd)
    renamed = type(sd)({k.replace(".module.", "."): v for k, v in sd.items()})
    if isinstance(sd, TrainState):
        renamed.noise = sd.noise
    sd = renamed
    stages = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
    bottleneck = depth >= 50
    T = x.shape[1]
    divisor = T if timestep is None or together else timestep

    def conv_bn(h, p, stride, pad):
        return per_frame(lambda f: _conv_bn(f, sd, p, stride, pad), h, together)

    def neuron(h, p):
        v, outs = 0.0, []
        for t in range(T):
            y, v = lif(h[:, t], v, sd, f"{p}.lif", cmode, False)
            outs.append(y)
        return torch.stack(outs, 1)

    def act(h, p, spiking):
        return neuron(h, p) if spiking else torch.relu(h)

    h = x
    if norm is not None:
        h = (h - torch.tensor(norm["mean"]).view(1, 1, -1, 1, 1)) / torch.tensor(norm["std"]).view(1, 1, -1, 1, 1)
    h = neuron(conv_bn(h, "conv", 2, 3), "lif")
    h = per_frame(lambda f: F.max_pool2d(f, 3, 2, 1), h, True)
    for i, n in enumerate(stages, 1):
        for j in range(n):
            p = f"layer{i}.{j}"
            stride = 2 if (i > 1 and j == 0) else 1
            first_spikes = not lite or j == 0      # lite: only lif1 of a stage's first block spikes
            if bottleneck:
                y = act(conv_bn(h, f"{p}.conv1", 1, 0), f"{p}.lif1", first_spikes)
                y = act(conv_bn(y, f"{p}.conv2", stride, 1), f"{p}.lif2", not lite)
                y = conv_bn(y, f"{p}.conv3", 1, 0)
                last = f"{p}.lif3"
            else:
                y = act(conv_bn(h, f"{p}.conv1", stride, 1), f"{p}.lif1", first_spikes)
                y = conv_bn(y, f"{p}.conv2", 1, 1)
                last = f"{p}.lif2"
            if f"{p}.downsample.1.weight" in sd:
                def down(f, p=p, stride=stride):
                    f = F.avg_pool2d(f, stride, stride, ceil_mode=True, count_include_pad=False)
                    return bn(F.conv2d(f, sd[f"{p}.downsample.1.weight"], sd[f"{p}.downsample.1.bias"]), sd,
                              f"{p}.downsample.2")
                idn = per_frame(down, h, together)
            else:
                idn = h
            h = act(y + idn, last, not lite)
    feats = F.adaptive_avg_pool2d(h.flatten(0, 1), 1).flatten(1).unflatten(0, h.shape[:2]).sum(1) / divisor
    return F.linear(feats, sd["fc.weight"], sd["fc.bias"])
