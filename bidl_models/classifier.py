"""The config's ``model`` dict: ``ImageClassifier`` = backbone (logits) + ``ClsHead`` (loss, top-k).

``model = dict(type='ImageClassifier', backbone=dict(type=...), neck=None,
head=dict(type='ClsHead', loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1), topk=(1, 5)))``.
The classifier's only parameters are the backbone's, under ``backbone.`` in its state_dict, so
:func:`bidl_models.checkpoint.read_state_dict` loads a classifier checkpoint into a bare backbone.

A one-logit head (``nclass=1``, BIDL's IMDB FastText) is a binary classifier: its logit ``s`` is the
two-class score ``[0, s]``, so ``p(class 1) = softmax([0, s])_1 = sigmoid(s)`` and the configured loss
becomes the binary cross entropy on ``s`` with a float target ``q``::

    loss = -(q log sigmoid(s) + (1 - q) log(1 - sigmoid(s)))
    CrossEntropyLoss: q = y        LabelSmoothLoss: q = (1 - e) y + e / 2

(exactly the two-class losses on ``[0, s]``); accuracy predicts class 1 where ``s > 0``. Labels of a
one-logit head must be 0 or 1.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import build_backbone
from .checkpoint import load_weights, read_state_dict
from .registry import Registry

CLASSIFIERS = Registry("classifier")
HEADS = Registry("head")
LOSSES = Registry("loss")

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def is_binary(cls_score: Tensor) -> bool:
    """One score column: a binary logit (see the module docstring)."""
    return cls_score.dim() == 2 and cls_score.shape[1] == 1


def binary_target(label: Tensor, where: str) -> Tensor:
    """``label`` as a float ``[B]`` target of a one-logit head; ValueError unless every label is 0 or 1."""
    label = label.view(-1)
    bad = (label != 0) & (label != 1)
    if bool(bad.any()):
        raise ValueError(f"{where}: a one-logit (binary) head needs gt_label 0 or 1; got "
                         f"{label[bad][0].item()!r} (the backbone has nclass=1)")
    return label.float()


def class_scores(cls_score: Tensor) -> Tensor:
    """Per-class scores ``[B, K]``: a binary logit ``s`` ``[B, 1]`` becomes ``[-s, s]`` (class 1 wins
    where ``s > 0``; ties go to class 0), anything else is returned as it is."""
    return torch.cat([-cls_score, cls_score], dim=1) if is_binary(cls_score) else cls_score


@LOSSES.register()
class CrossEntropyLoss(nn.Module):
    """Softmax cross entropy times ``loss_weight``; with ``class_weight`` each sample's loss is scaled
    by its class's weight and 'mean' is the plain mean over samples (not torch's weighted mean).
    On one score column: the binary cross entropy of the logit (``use_sigmoid=True`` says so explicitly,
    as mmcls's; it is refused for several columns, i.e. multi-label training)."""

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean",
                 class_weight: Optional[Sequence[float]] = None, use_sigmoid: bool = False):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"CrossEntropyLoss: reduction={reduction!r}: expected one of {list(_REDUCTIONS)}")
        self.loss_weight, self.reduction, self.use_sigmoid = float(loss_weight), reduction, bool(use_sigmoid)
        self.class_weight = None if class_weight is None else [float(w) for w in class_weight]

    def forward(self, cls_score: Tensor, label: Tensor) -> Tensor:
        w = None if self.class_weight is None else cls_score.new_tensor(self.class_weight).float()
        if is_binary(cls_score):
            q = binary_target(label, "CrossEntropyLoss")
            loss = F.binary_cross_entropy_with_logits(cls_score.float().view(-1), q, reduction="none")
            if w is not None:
                if len(w) != 2:
                    raise ValueError(f"CrossEntropyLoss: class_weight has {len(w)} entries; a one-logit "
                                     "(binary) head has 2 classes")
                loss = loss * w[label.view(-1).long()]
            return self.loss_weight * _reduce(loss, self.reduction)
        if self.use_sigmoid:
            raise ValueError(f"CrossEntropyLoss: use_sigmoid=True with {cls_score.shape[1]} score columns "
                             "(multi-label) is not supported; it is for a one-logit (binary) head")
        loss = F.cross_entropy(cls_score.float(), label.long(), weight=w, reduction="none")
        return self.loss_weight * _reduce(loss, self.reduction)


@LOSSES.register()
class LabelSmoothLoss(nn.Module):
    """Cross entropy against smoothed targets ``(1 - e) * onehot + e / K`` (``e = label_smooth_val``);
    on one score column (binary, K = 2) the binary cross entropy with target ``(1 - e) y + e / 2``."""

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
        if is_binary(cls_score):
            if self.num_classes not in (None, 2):
                raise ValueError(f"LabelSmoothLoss: num_classes={self.num_classes} but a one-logit head has 2 classes")
            q = binary_target(label, "LabelSmoothLoss") * (1.0 - self.eps) + self.eps / 2
            loss = F.binary_cross_entropy_with_logits(cls_score.float().view(-1), q, reduction="none")
            return self.loss_weight * _reduce(loss, self.reduction)
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

    def correct(self, cls_score: Tensor, gt_label: Tensor) -> dict[int, int]:
        """``{k: samples whose label is among the k best classes}`` (k > nclass counts every sample;
        a one-logit head is scored as the two classes ``[-s, s]``)."""
        scores = class_scores(cls_score.detach())
        out = {}
        for k in self.topk:
            kk = min(k, scores.shape[1])
            pred = scores.topk(kk, dim=1).indices
            out[k] = int((pred == gt_label.view(-1, 1).to(pred.device)).any(1).sum())
        return out

    def accuracy(self, cls_score: Tensor, gt_label: Tensor) -> dict[str, float]:
        """``{'top-k': percent}`` for each k (see :meth:`correct`)."""
        n = max(gt_label.numel(), 1)
        return {f"top-{k}": 100.0 * c / n for k, c in self.correct(cls_score, gt_label).items()}

    def loss(self, cls_score: Tensor, gt_label: Tensor) -> dict[str, Any]:
        losses: dict[str, Any] = {"loss": self.compute_loss(cls_score, gt_label)}
        if self.cal_acc:
            with torch.no_grad():
                losses["accuracy"] = self.accuracy(cls_score.detach(), gt_label)
        return losses

    def simple_test(self, cls_score: Tensor) -> Tensor:
        """Class probabilities ``[B, nclass]`` (``[B, 2]``: ``[1 - sigmoid(s), sigmoid(s)]`` for one logit)."""
        if is_binary(cls_score):
            p = torch.sigmoid(cls_score.float())
            return torch.cat([1 - p, p], dim=1)
        return F.softmax(cls_score.float(), dim=1)


@CLASSIFIERS.register()
class ImageClassifier(nn.Module):
    """``backbone`` (``x[B, T, C, H, W]`` -> logits) + ``head``; ``neck`` must be None (unused in BIDL)."""

    def __init__(self, backbone: Mapping[str, Any], head: Optional[Mapping[str, Any]] = None, neck: Any = None,
                 pretrained: Optional[str] = None, train_cfg: Any = None, init_cfg: Any = None,
                 seed: Optional[int] = 0):
        super().__init__()
        if neck is not None:
            raise ValueError(f"model.neck={neck!r}: necks are not used by BIDL models; expected None")
        if isinstance(backbone, Mapping) and "split" in backbone:
            raise ValueError("model.backbone.split: a classifier holds the whole backbone; split is for model_0..n")
        self.backbone = build_backbone(backbone, seed=seed, where="model.backbone")
        self.head = HEADS.build(head if head is not None else dict(type="ClsHead"), "model.head")
        if pretrained:
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
        """Class probabilities ``[B, nclass]`` (``[B, 2]`` for a one-logit head)."""
        return self.head.simple_test(self.backbone(img))


def build_classifier(cfg: Mapping[str, Any], seed: Optional[int] = 0) -> ImageClassifier:
    """The config's ``model`` dict -> classifier (backbone weights seeded by ``seed``). Without a
    ``type`` it is an ``ImageClassifier``, as BIDL's ``tools/train.py`` (which never reads the key)."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"model: expected a dict with a 'backbone' key, got {cfg!r}")
    cfg = dict(cfg)
    cfg.setdefault("type", "ImageClassifier")
    return CLASSIFIERS.build(cfg, "model", seed=seed)


def build_loss(cfg: Mapping[str, Any]) -> nn.Module:
    return LOSSES.build(cfg, "loss")
