import math

import pytest
import timm
import torch

from t2t.config import OptimConfig
from t2t.engine.optim import LRSchedule, build_optimizer, reference_timm_scheduler, scaled_lr

# The official recipe: 300 cosine epochs (10 warm-up epochs from 1e-6 inside them), 10 cool-down epochs.
SCHEDULE = LRSchedule(base_lr=5e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=10, epochs=300,
                      steps_per_epoch=100, per_step=True)


def test_values_at_the_edges():
    s = SCHEDULE
    assert s.lr_at(0) == pytest.approx(1e-6)
    assert s.lr_at(500) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6))  # halfway through warm-up
    peak = s.lr_at(1000)  # first step after warm-up: cosine at t/T = 1000/30000
    assert peak == pytest.approx(1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + math.cos(math.pi * 1000 / 30000)))
    assert max(s.lr_at(t) for t in range(0, 2000, 7)) <= 5e-4
    assert s.lr_at(15000) == pytest.approx(1e-5 + 0.5 * (5e-4 - 1e-5))  # half of the cosine
    assert s.lr_at(29999) == pytest.approx(1e-5, rel=1e-3)  # end of the cosine
    assert s.lr_at(30000) == s.lr_at(30999) == 1e-5  # cool-down at min lr


def test_per_epoch_mode_steps_once_per_epoch():
    s = LRSchedule(**{**SCHEDULE.__dict__, "per_step": False})
    assert s.lr_at(0) == s.lr_at(99) == pytest.approx(1e-6)
    assert s.lr_at(100) == pytest.approx(1e-6 + (5e-4 - 1e-6) / 10)
    assert s.lr_at(1000) == s.lr_at(1099)


@pytest.mark.parametrize("per_step", [True, False])
def test_matches_timm_cosine_scheduler(per_step):
    s = LRSchedule(base_lr=1e-3, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=3, epochs=20, steps_per_epoch=7,
                   per_step=per_step)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    timm_sched = reference_timm_scheduler(s, opt)
    for step in range(0, 22 * 7):
        if per_step:
            timm_sched.step_update(step)
        else:
            timm_sched.step(step // 7)
        assert s.lr_at(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step


def test_linear_lr_scaling():
    assert scaled_lr(5e-4, 512, 512) == 5e-4
    assert scaled_lr(5e-4, 256, 512) == 2.5e-4
    assert scaled_lr(1e-3, 1024, 512) == 2e-3


def test_no_weight_decay_on_biases_norms_and_tokens():
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05), lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "cls_token" in no_decay and "blocks.0.attn.proj.bias" in no_decay and "norm.weight" in no_decay
    assert "blocks.0.attn.qkv.weight" in decay and "head.weight" in decay
    assert "pos_embed" not in decay | no_decay and "tokens_to_token.attention1.w" not in decay | no_decay
    assert isinstance(opt, torch.optim.AdamW)
