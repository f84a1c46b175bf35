"""The config's ``model`` dict: ``ImageClassifier`` = backbone (logits) + ``ClsHead`` (loss, top-k).

``model = dict(type='ImageClassifier', backbone=dict(type=...), neck=None,
head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1), topk=(1, 5)))``.
The classifier's only parameters are the backbone's, under ``backbone.`` in its state_dict, so
:func:`bidl_models.checkpoint.read_state_dict` loads a classifier checkpoint into a bare backbone.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

CLASSIFIERS = Registry("classifier")
HEADS = Registry("head")
LOSSES = Registry("loss")

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


@LOSSES.register()
class CrossEntropyLoss(nn.Module):
    """Softmax cross entropy times ``loss_weight``; with ``class_weight`` each sample's loss is scaled
    by its class's weight and 'mean' is the plain mean over samples (not torch's weighted mean)."""

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean",
                 class_weight: Optional[Sequence[float]] = None, use_sigmoid: bool = False):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"CrossEntropyLoss: reduction={reduction!r}: expected one of {list(_REDUCTIONS)}")
        if use_sigmoid:
            raise ValueError("CrossEntropyLoss: use_sigmoid=True is not supported (single-label classification)")
        self.loss_weight, self.reduction = float(loss_weight), reduction
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]

    def forward(self, cls_score: Tensor, label: Tensor) -> Tensor:
        w = None if self.class_weight is None else cls_score.new_tensor(self.class_weight)
        loss = F.cross_entropy(cls_score.float(), label.long(), weight=w, reduction="none")
        return self.loss_weight * _reduce(loss, self.reduction)


@LOSSES.register()
class LabelSmoothLoss(nn.Module):
    """Cross entropy against smoothed targets ``(1 - e) * onehot + e / K`` (``e = label_smooth_val``)."""

    def __init__(self, label_smooth_val: float = 0.1, loss_weight: float = 1.0, reduction: str = "mean",
                 num_classes: Optional[int] = None, mode: str = "original"):
        super().__init__()
        if not 0.0 <= float(label_smooth_val) < 1.0:
            raise ValueError(f"LabelSmoothLoss: label_smooth_val={label_smooth_val!r}: expected in [0, 1)")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"LabelSmoothLoss: reduction={reduction!r}: expected one of {list(_REDUCTIONS)}")
        if mode != "original":
            raise ValueError(f"LabelSmoothLoss: mode={mode!r}: only 'original' ((1-e)*onehot + e/K) is supported")
        self.eps, self.loss_weight, self.reduction = float(label_smooth_val), float(loss_weight), reduction
        self.num_classes = num_classes

    def forward(self, cls_score: Tensor, label: Tensor) -> Tensor:
        k = cls_score.shape[1]
        if self.num_classes is not None and self.num_classes != k:
            raise ValueError(f"LabelSmoothLoss: num_classes={self.num_classes} but the scores have {k} classes")
        logp = F.log_softmax(cls_score.float(), dim=1)
        target = torch.full_like(logp, self.eps / k)
        target.scatter_(1, label.long().view(-1, 1), 1.0 - self.eps + self.eps / k)
        loss = -(target * logp).sum(dim=1)
        return self.loss_weight * _reduce(loss, self.reduction)


@HEADS.register()
class ClsHead(nn.Module):
    """Loss and top-k accuracy on the backbone's logits (no parameters)."""

    def __init__(self, loss: Mapping[str, Any] = dict(type="CrossEntropyLoss", loss_weight=1.0),
                 topk: int | Sequence[int] = (1,), cal_acc: bool = False, init_cfg: Any = None):
        super().__init__()
        topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not topk or not all(isinstance(k, int) and k > 0 for k in topk):
            raise ValueError(f"ClsHead: topk={topk!r}: expected positive ints")
        self.topk, self.cal_acc = topk, bool(cal_acc)
        self.compute_loss = LOSSES.build(loss, "model.head.loss")

    def accuracy(self, cls_score: Tensor, gt_label: Tensor) -> dict[str, float]:
        """``{'top-k': percent}`` for each k (k > nclass counts every sample)."""
        out = {}
        for k in self.topk:
            kk = min(k, cls_score.shape[1])
            pred = cls_score.topk(kk, dim=1).indices
            out[f"top-{k}"] = 100.0 * (pred == gt_label.view(-1, 1)).any(1).float().mean().item()
        return out

    def loss(self, cls_score: Tensor, gt_label: Tensor) -> dict[str, Any]:
        losses: dict[str, Any] = {"loss": self.compute_loss(cls_score, gt_label)}
        if self.cal_acc:
            with torch.no_grad():
                losses["accuracy"] = self.accuracy(cls_score.detach(), gt_label)
        return losses

    def simple_test(self, cls_score: Tensor) -> Tensor:
        """Class probabilities ``[B, nclass]``."""
        return F.softmax(cls_score.float(), dim=1)


@CLASSIFIERS.register()
class ImageClassifier(nn.Module):
    """``backbone`` (``x[B, T, C, H, W]`` -> logits) + ``head``; ``neck`` must be None (unused in BIDL)."""

    def __init__(self, backbone: Mapping[str, Any], head: Optional[Mapping[str, Any]] = None, neck: Any = None,
                 pretrained: Optional[str] = None, train_cfg: Any = None, init_cfg: Any = None,
                 seed: Optional[int] = 0):
        super().__init__()
        from .backbones import build_backbone
        if neck is not None:
            raise ValueError(f"model.neck={neck!r}: necks are not used by BIDL models; expected None")
        if isinstance(backbone, Mapping) and "split" in backbone:
            raise ValueError("model.backbone.split: a classifier holds the whole backbone; split is for model_0..n")
        self.backbone = build_backbone(backbone, seed=seed, where="model.backbone")
        self.head = HEADS.build(head if head is not None else dict(type="ClsHead"), "model.head")
        if pretrained:
            from .checkpoint import load_weights, read_state_dict
            load_weights(self.backbone, read_state_dict(pretrained), f"model.pretrained {pretrained!r}")

    def forward(self, img: Tensor) -> Tensor:
        """Logits ``[B, nclass]`` of ``img[B, T, C, H, W]``."""
        return self.backbone(img)

    def forward_train(self, img: Tensor, gt_label: Tensor) -> dict[str, Any]:
        """``{'loss': scalar, 'accuracy': {...} (if cal_acc), 'logits': [B, nclass] detached}``."""
        logits = self.backbone(img)
        out = self.head.loss(logits, gt_label)
        out["logits"] = logits.detach()
        return out

    @torch.no_grad()
    def simple_test(self, img: Tensor) -> Tensor:
        """Class probabilities ``[B, nclass]``."""
        return self.head.simple_test(self.backbone(img))


def build_classifier(cfg: Mapping[str, Any], seed: Optional[int] = 0) -> ImageClassifier:
    """The config's ``model`` dict -> classifier (backbone weights seeded by ``seed``)."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"model: expected a dict with a 'type' key, got {cfg!r}")
    cfg = dict(cfg)
    return CLASSIFIERS.build(cfg, "model", seed=seed)


def build_loss(cfg: Mapping[str, Any]) -> nn.Module:
    return LOSSES.build(cfg, "loss")
