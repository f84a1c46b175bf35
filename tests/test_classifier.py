"""ImageClassifier / ClsHead / losses, the optimizer and LR schedule builders."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bidl_models.checkpoint import load_weights, read_state_dict
from bidl_models.backbones import build_backbone
from bidl_models.classifier import ClsHead, CrossEntropyLoss, LabelSmoothLoss, build_classifier
from bidl_models.config import load_config
from bidl_models.schedule import LrSchedule
from bidl_models.trainer import build_optimizer

TINY = dict(type="SeqClif3Fc3DmItout", timestep=3, c0=2, h0=16, w0=16, nclass=5)


def test_label_smooth_loss_matches_its_formula():
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    eps = 0.1
    target = torch.full((6, 5), eps / 5)
    target[torch.arange(6), y] = 1 - eps + eps / 5
    want = -(target * F.log_softmax(x, 1)).sum(1).mean()
    assert torch.allclose(LabelSmoothLoss(eps, loss_weight=2.0)(x, y), 2 * want)
    assert torch.allclose(LabelSmoothLoss(0.0)(x, y), F.cross_entropy(x, y))
    assert torch.allclose(CrossEntropyLoss(loss_weight=0.5)(x, y), 0.5 * F.cross_entropy(x, y))
    w = [1.0, 2.0, 0.5, 1.0, 3.0]
    per = F.cross_entropy(x, y, reduction="none") * torch.tensor(w)[y]     # plain mean of weighted losses
    assert torch.allclose(CrossEntropyLoss(class_weight=w)(x, y), per.mean())
    with pytest.raises(ValueError, match="label_smooth_val=1.5"):
        LabelSmoothLoss(1.5)


def test_cls_head_topk_accuracy():
    head = ClsHead(loss=dict(type="CrossEntropyLoss"), topk=(1, 2), cal_acc=True)
    scores = torch.tensor([[3.0, 2, 1], [1.0, 3, 2], [1.0, 2, 3]])
    out = head.loss(scores, torch.tensor([0, 2, 0]))
    assert out["accuracy"] == pytest.approx({"top-1": 100 / 3, "top-2": 200 / 3})
    assert torch.allclose(out["loss"], F.cross_entropy(scores, torch.tensor([0, 2, 0])))
    with pytest.raises(ValueError, match=r"model.head.loss.type='Focal': unknown loss"):
        ClsHead(loss=dict(type="Focal"))


def test_classifier_from_config_and_checkpoint_loads_into_bare_backbone(tmp_path):
    cfg = load_config("clif3fc3dm_itout-b16x1-dvsglyphs")
    model = build_classifier(dict(cfg.model.to_dict(), backbone=TINY), seed=3)
    assert all(k.startswith("backbone.") for k in model.state_dict())
    assert isinstance(model.head.compute_loss, LabelSmoothLoss) and model.head.topk == (1, 5)
    x = (torch.rand(2, 3, 2, 16, 16) < 0.2).float()
    model.eval()
    probs = model.simple_test(x)
    assert probs.shape == (2, 5) and torch.allclose(probs.sum(1), torch.ones(2))
    torch.save(dict(state_dict=model.state_dict(), meta=dict(note="x")), tmp_path / "c.pth")
    bare = build_backbone(TINY, seed=99)
    load_weights(bare, read_state_dict(tmp_path / "c.pth"))
    bare.eval()
    assert torch.equal(bare(x), model(x))
    out = model.forward_train(x, torch.tensor([1, 2]))
    assert out["loss"].requires_grad and set(out["accuracy"]) == {"top-1", "top-5"}


def test_classifier_config_errors():
    with pytest.raises(ValueError, match=r"model.neck=.*expected None"):
        build_classifier(dict(type="ImageClassifier", backbone=TINY, neck=dict(type="GAP")))
    with pytest.raises(ValueError, match=r"model.type='Detector': unknown classifier"):
        build_classifier(dict(type="Detector", backbone=TINY))
    with pytest.raises(ValueError, match=r"model.backbone.type='Nope'"):
        build_classifier(dict(type="ImageClassifier", backbone=dict(type="Nope")))


def test_a_model_without_type_is_an_image_classifier():
    """BIDL's tools/train.py never reads model.type (clif7fc1dg_it-b16x1-dvsgesture has none)."""
    from bidl_models.classifier import ImageClassifier
    from bidl_models.config import load_config
    assert isinstance(build_classifier(dict(backbone=TINY)), ImageClassifier)
    cfg = load_config("clif7fc1dg_it-b16x1-dvsgesture")
    assert "type" not in cfg.model
    assert isinstance(build_classifier(cfg.model.to_dict()), ImageClassifier)


def test_build_optimizer_and_errors():
    net = torch.nn.Linear(2, 2)
    opt = build_optimizer(net, dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert isinstance(build_optimizer(net, dict(type="Adam", lr=1e-3)), torch.optim.Adam)
    with pytest.raises(ValueError, match=r"optimizer type='Adam': unexpected key\(s\) \['momentum'\].*_delete_=True"):
        build_optimizer(net, dict(type="Adam", lr=1e-3, momentum=0.9))
    with pytest.raises(ValueError, match=r"optimizer.type='Lion'"):
        build_optimizer(net, dict(type="Lion", lr=1e-3))


def _opt(lr=1.0):
    return torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=lr)


def test_lr_schedule_cosine_step_and_warmup():
    s = LrSchedule(_opt(1.0), dict(policy="CosineAnnealing", min_lr=0.1, by_epoch=False), iters_per_epoch=10,
                   max_epochs=2)
    assert s.apply(0) == pytest.approx(1.0)
    assert s.apply(10) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert s.lr_at(20)[0] == pytest.approx(0.1)
    e = LrSchedule(_opt(1.0), dict(policy="CosineAnnealing", min_lr_ratio=0.0), 10, 4)   # by epoch
    assert e.lr_at(9) == e.lr_at(0) and e.lr_at(10)[0] == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    st = LrSchedule(_opt(0.5), dict(policy="step", step=[2, 3], gamma=0.1), 5, 4)
    assert [round(st.lr_at(i)[0], 6) for i in (0, 9, 10, 15)] == [0.5, 0.5, 0.05, 0.005]
    w = LrSchedule(_opt(1.0), dict(policy="fixed", warmup="linear", warmup_iters=4, warmup_ratio=0.2), 10, 1)
    assert [round(w.lr_at(i)[0], 6) for i in (0, 2, 4)] == [0.2, 0.6, 1.0]
    c = LrSchedule(_opt(1.0), dict(policy="fixed", warmup="constant", warmup_iters=1, warmup_by_epoch=True,
                                   warmup_ratio=0.5), 10, 3)
    assert c.lr_at(9)[0] == 0.5 and c.lr_at(10)[0] == 1.0
    with pytest.raises(ValueError, match=r"lr_config: unexpected key\(s\) \['bogus'\]"):
        LrSchedule(_opt(), dict(policy="fixed", bogus=1), 1, 1)
    with pytest.raises(ValueError, match=r"lr_config.policy='poly'"):
        LrSchedule(_opt(), dict(policy="poly"), 1, 1)


def test_one_logit_losses_are_the_two_class_losses_on_0_s():
    """A binary logit s is the two-class score [0, s]: each loss equals its softmax form on [0, s], i.e.
    the binary cross entropy with a float target (y, or (1 - e) y + e / 2 with label smoothing)."""
    torch.manual_seed(0)
    s, y = torch.randn(9, 1) * 3, torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1])
    two = torch.cat([torch.zeros_like(s), s], 1)
    ce = CrossEntropyLoss()(s, y)
    assert torch.allclose(ce, F.cross_entropy(two, y), atol=1e-6)
    assert torch.allclose(ce, F.binary_cross_entropy_with_logits(s[:, 0], y.float()))
    assert torch.allclose(CrossEntropyLoss(use_sigmoid=True)(s, y), ce)              # mmcls's explicit form
    w = [0.5, 2.0]
    assert torch.allclose(CrossEntropyLoss(class_weight=w)(s, y),
                          (F.binary_cross_entropy_with_logits(s[:, 0], y.float(), reduction="none")
                           * torch.tensor(w)[y]).mean())
    ls = LabelSmoothLoss(0.2)(s, y)
    assert torch.allclose(ls, LabelSmoothLoss(0.2)(two, y), atol=1e-6)
    assert torch.allclose(ls, F.binary_cross_entropy_with_logits(s[:, 0], y.float() * 0.8 + 0.1))
    assert CrossEntropyLoss(reduction="none")(s, y).shape == (9,)
    with pytest.raises(ValueError, match=r"one-logit \(binary\) head needs gt_label 0 or 1; got 2"):
        CrossEntropyLoss()(s, torch.tensor([0, 1, 2, 0, 1, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"use_sigmoid=True with 5 score columns"):
        CrossEntropyLoss(use_sigmoid=True)(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"class_weight has 3 entries"):
        CrossEntropyLoss(class_weight=[1, 1, 1])(s, y)


def test_one_logit_head_accuracy_and_probabilities():
    head = ClsHead(loss=dict(type="CrossEntropyLoss"), topk=(1, 5), cal_acc=True)
    s = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    y = torch.tensor([1, 1, 0, 0])
    assert head.correct(s, y) == {1: 2, 5: 4}                                  # predicted 1 where s > 0
    assert head.accuracy(s, y) == {"top-1": 50.0, "top-5": 100.0}
    out = head.loss(s, y)
    assert torch.allclose(out["loss"], F.binary_cross_entropy_with_logits(s[:, 0], y.float()))
    p = head.simple_test(s)
    assert p.shape == (4, 2) and torch.allclose(p[:, 1], torch.sigmoid(s[:, 0])) and torch.allclose(p.sum(1), torch.ones(4))
