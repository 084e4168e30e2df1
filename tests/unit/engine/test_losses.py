import pytest
import torch

from t2t.config import ConfigError, DistillConfig, LossConfig, TokenLabelConfig
from t2t.engine.distill import DistillationLoss, TokenLabelLoss
from t2t.engine.losses import SoftTargetLoss, build_loss


def test_build_loss_takes_the_loss_section():
    loss = build_loss(LossConfig(label_smoothing=0.2), 5)
    assert isinstance(loss, SoftTargetLoss) and loss.smoothing == 0.2 and loss.num_classes == 5
    logits, targets = torch.zeros(2, 5), torch.tensor([0, 3])
    # uniform logits: the cross-entropy is log(5) whatever the smoothing
    torch.testing.assert_close(loss(logits, targets, None), torch.log(torch.tensor(5.0)))


def test_build_loss_token_labeling_and_distillation_branches():
    token = build_loss(LossConfig(label_smoothing=0.1), 5, token_label=TokenLabelConfig(cls_weight=2.0))
    assert isinstance(token, TokenLabelLoss) and (token.cls_weight, token.smoothing) == (2.0, 0.1)
    with pytest.raises(ConfigError, match="model.token_label=true with distill.type='hard'"):
        build_loss(LossConfig(), 5, token_label=TokenLabelConfig(), distill=DistillConfig(type="hard"),
                   teacher=lambda images: images)
    two_heads = build_loss(LossConfig(), 5, distill=DistillConfig(), two_heads=True)  # a distilled model alone
    assert isinstance(two_heads, DistillationLoss) and two_heads.kind == "none"
    teacher = build_loss(LossConfig(), 5, distill=DistillConfig(type="soft", alpha=0.3, tau=2.0),
                         teacher=lambda images: torch.zeros(len(images), 5), device=torch.device("cpu"))
    assert isinstance(teacher, DistillationLoss) and (teacher.kind, teacher.alpha, teacher.tau) == ("soft", 0.3, 2.0)
    assert isinstance(build_loss(LossConfig(), 5, distill=DistillConfig(type="soft")), SoftTargetLoss)


def test_bce_loss_against_the_formula_with_indices_mixup_targets_and_a_threshold():
    """loss.type=bce: mean over batch and classes of -[t log s(x) + (1 - t) log(1 - s(x))], with t the one-hot
    row smoothed as timm smooths it for BCE (off = s / C, on = 1 - s + s / C), or mixup's soft row as it is."""
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 3, 3, 1])
    loss = build_loss(LossConfig(type="bce", label_smoothing=0.1), 5)
    off = 0.1 / 5
    t = torch.full((4, 5), off).scatter_(1, labels[:, None], 1 - 0.1 + off)

    def by_hand(x, target):
        p = torch.sigmoid(x.double())
        return -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    assert torch.allclose(loss(logits, labels, None).double(), by_hand(logits, t), atol=1e-6)
    soft = torch.softmax(torch.randn(4, 5), dim=1)  # as mixup / cutmix make them, already smoothed
    assert torch.allclose(loss(logits, soft, None).double(), by_hand(logits, soft), atol=1e-6)
    thresholded = build_loss(LossConfig(type="bce", label_smoothing=0.1, bce_target_threshold=0.2), 5)
    assert torch.allclose(thresholded(logits, soft, None).double(), by_hand(logits, (soft > 0.2).double()),
                          atol=1e-6)
    assert not torch.allclose(build_loss(LossConfig(type="ce"), 5)(logits, labels, None),
                              loss(logits, labels, None))


def test_bce_is_refused_where_it_does_nothing_or_cannot_apply():
    from t2t.config import load_config
    with pytest.raises(ConfigError, match=r"loss.bce_target_threshold=0.2 is used by loss.type=bce only"):
        load_config(None, ["loss.bce_target_threshold=0.2"])
    with pytest.raises(ConfigError, match=r"loss.type='bce' with model.token_label=true"):
        build_loss(LossConfig(type="bce"), 5, token_label=TokenLabelConfig())
    teacher = torch.nn.Linear(3, 5)
    wrapped = build_loss(LossConfig(type="bce"), 5, distill=DistillConfig(type="soft", alpha=0.5), teacher=teacher,
                         device=torch.device("cpu"))
    assert isinstance(wrapped, DistillationLoss)  # the label part of distillation may be BCE


def test_a_distilled_model_without_a_teacher_term_is_told_its_second_head_learns_nothing(caplog):
    caplog.set_level("WARNING", logger="t2t.engine.losses")
    build_loss(LossConfig(), 5, distill=DistillConfig(), two_heads=True)
    assert "only the class head learns" in caplog.text
    caplog.clear()
    build_loss(LossConfig(), 5, distill=DistillConfig(type="hard", alpha=0.5), two_heads=True,
               teacher=lambda images: torch.zeros(len(images), 5), device=torch.device("cpu"))
    assert "only the class head learns" not in caplog.text
