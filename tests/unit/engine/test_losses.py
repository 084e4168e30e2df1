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
