"""Distillation and token-labeling losses against hand computations on random logits."""
import math

import numpy as np
import pytest
import torch

from t2t.engine.distill import (
    DistillationLoss,
    TokenLabelLoss,
    hard_distillation_loss,
    soft_cross_entropy,
    soft_distillation_loss,
    token_label_loss,
)


def _log_softmax(row):
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - z for v in row]


def _soft_by_hand(s, t, tau):
    """sum over rows and classes of p_t * (log p_t - log p_s) at temperature tau, * tau^2 / numel."""
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        ls = _log_softmax([v / tau for v in srow])
        lt = _log_softmax([v / tau for v in trow])
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    return total * tau * tau / s.numel()


def _ce_by_hand(s, labels):
    return sum(-_log_softmax(row)[y] for row, y in zip(s.tolist(), labels)) / len(labels)


@pytest.mark.parametrize("tau", [1.0, 3.0, 0.5])
def test_soft_term_is_deits_formula(tau):
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    assert soft_distillation_loss(s, t, tau).item() == pytest.approx(_soft_by_hand(s, t, tau), rel=1e-5)
    assert soft_distillation_loss(t, t, tau).item() == pytest.approx(0.0, abs=1e-6)


def test_hard_term_is_cross_entropy_against_teacher_argmax():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    labels = [int(np.argmax(row)) for row in t.tolist()]
    assert hard_distillation_loss(s, t).item() == pytest.approx(_ce_by_hand(s, labels), rel=1e-5)


def _onehot(labels, n):
    return torch.nn.functional.one_hot(torch.tensor(labels), n).float()


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_total_mixes_base_and_teacher_term(kind, alpha):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(4, 8, generator=g)
    w = torch.randn(8, 5, generator=g)
    s = torch.randn(4, 5, generator=g)
    labels = [0, 3, 1, 4]
    calls = []

    def teacher(x):
        calls.append(x)
        return x @ w

    loss = DistillationLoss(soft_cross_entropy, teacher, kind=kind, alpha=alpha, tau=2.0)
    got = loss(s, _onehot(labels, 5), images).item()
    t = images @ w
    term = _soft_by_hand(s, t, 2.0) if kind == "soft" else _ce_by_hand(s, t.argmax(1).tolist())
    assert got == pytest.approx((1 - alpha) * _ce_by_hand(s, labels) + alpha * term, rel=1e-5)
    assert len(calls) == (0 if alpha == 0 else 1)  # alpha = 0: the teacher is never run
    if calls:
        assert calls[0] is images  # the teacher sees the batch the student saw


def test_distilled_model_heads_learn_labels_and_teacher():
    g = torch.Generator().manual_seed(4)
    cls_out, dist_out, t = (torch.randn(3, 4, generator=g) for _ in range(3))
    labels = [2, 0, 1]
    loss = DistillationLoss(soft_cross_entropy, lambda x: t, kind="hard", alpha=0.5)
    got = loss((cls_out, dist_out), _onehot(labels, 4), torch.zeros(3)).item()
    want = 0.5 * _ce_by_hand(cls_out, labels) + 0.5 * _ce_by_hand(dist_out, t.argmax(1).tolist())
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("kind, alpha", [("none", 0.5), ("soft", 0.0), ("hard", 0.0)])
def test_two_heads_without_a_teacher_term_train_the_class_head_alone_as_deit(kind, alpha):
    """DeiT's losses.py: base(class logits) alone; the distillation head gets zero gradients, but gets them."""
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(4, 8, generator=g)
    head, head_dist = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)
    labels = [1, 4, 0, 2]
    loss_fn = DistillationLoss(soft_cross_entropy, lambda x: 1 / 0, kind=kind, alpha=alpha)
    loss = loss_fn((head(feats), head_dist(feats)), _onehot(labels, 5), torch.zeros(4))
    assert torch.equal(loss, soft_cross_entropy(head(feats), _onehot(labels, 5)))
    assert loss.item() == pytest.approx(_ce_by_hand(head(feats).detach(), labels), rel=1e-5)
    loss.backward()
    assert head.weight.grad.abs().sum() > 0
    assert head_dist.weight.grad is not None and torch.equal(head_dist.weight.grad, torch.zeros(5, 8))


def test_alpha_zero_is_exactly_the_base_loss():
    s = torch.randn(4, 6)
    target = torch.softmax(torch.randn(4, 6), 1)
    loss = DistillationLoss(soft_cross_entropy, lambda x: 1 / 0, kind="soft", alpha=0.0)
    assert torch.equal(loss(s, target, torch.zeros(4)), soft_cross_entropy(s, target))


def test_gradient_reaches_student_not_teacher():
    teacher = torch.nn.Linear(3, 4)
    student = torch.nn.Linear(3, 4)
    x = torch.randn(5, 3)
    loss = DistillationLoss(soft_cross_entropy, teacher, kind="soft", alpha=1.0)
    loss(student(x), torch.full((5, 4), 0.25), x).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None


@pytest.mark.parametrize("bad", [dict(kind="soft", alpha=1.5), dict(kind="hard", alpha=-0.1),
                                 dict(kind="soft", alpha=0.5, tau=0.0), dict(kind="other")])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        DistillationLoss(soft_cross_entropy, lambda x: x, **bad)


def test_token_label_loss_by_hand():
    g = torch.Generator().manual_seed(5)
    B, N, C = 2, 4, 3
    cls_logits, aux = torch.randn(B, C, generator=g), torch.randn(B, N, C, generator=g)
    cls_t = torch.softmax(torch.randn(B, C, generator=g), 1)
    dense_t = torch.softmax(torch.randn(B, N, C, generator=g), 2)

    def ce(logits, target):
        return -sum(p * l for p, l in zip(target, _log_softmax(logits)))

    cls_part = sum(ce(cls_logits[b].tolist(), cls_t[b].tolist()) for b in range(B)) / B
    dense_part = sum(ce(aux[b, n].tolist(), dense_t[b, n].tolist()) for b in range(B) for n in range(N)) / (B * N)
    got = token_label_loss(cls_logits, aux, cls_t, dense_t, cls_weight=1.0, dense_weight=0.5).item()
    assert got == pytest.approx(cls_part + 0.5 * dense_part, rel=1e-5)
    module = TokenLabelLoss(cls_weight=2.0, dense_weight=1.0)
    assert module((cls_logits, aux), (cls_t, dense_t)).item() == pytest.approx(2 * cls_part + dense_part, rel=1e-5)
    with pytest.raises(ValueError, match="one row per patch token"):
        token_label_loss(cls_logits, aux[:, :3], cls_t, dense_t)
