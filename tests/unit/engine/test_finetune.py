"""Fine-tuning controls: SGD, per-group lr (transfer ratio, layer decay), freezing, with the schedule."""
import os

import pytest
import timm
import torch

from t2t.config import RECIPE_DIR, ConfigError, OptimConfig, load_config
from t2t.engine.optim import LRSchedule, build_optimizer, freeze_parameters, set_lr
from train_helpers import ROOT

DEPTH = 7  # t2t_vit_7


def _model():
    return timm.create_model("t2t_vit_7", img_size=32, num_classes=3)


def _lr_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}


def test_official_transfer_recipe_groups():
    """T2T module and blocks at 0.01 x lr, the head at the full lr; SGD momentum 0.9, wd 5e-4."""
    model = _model()
    cfg = OptimConfig(name="sgd", lr=0.05, weight_decay=5e-4, momentum=0.9, backbone_lr_scale=0.01)
    opt = build_optimizer(model, cfg, lr=0.05)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]
    lrs = _lr_by_name(model, opt)
    assert lrs["head.weight"] == (0.05, 5e-4) and lrs["head.bias"] == (0.05, 0.0)
    assert lrs["tokens_to_token.project.weight"] == (pytest.approx(5e-4), 5e-4)
    assert lrs["blocks.6.mlp.fc2.weight"] == (pytest.approx(5e-4), 5e-4)
    assert lrs["blocks.0.norm1.weight"] == (pytest.approx(5e-4), 0.0)
    assert lrs["cls_token"][1] == 0.0
    assert "pos_embed" not in lrs and "tokens_to_token.attention1.w" not in lrs  # fixed tensors
    assert model.head.weight in opt.param_groups[0]["params"]  # the logs show the head's (scheduled) lr
    # Every trainable parameter is in exactly one group.
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(lrs) == sorted(trainable) and sum(len(g["params"]) for g in opt.param_groups) == len(trainable)


def test_schedule_keeps_every_group_factor():
    model = _model()
    opt = build_optimizer(model, OptimConfig(name="sgd", backbone_lr_scale=0.01, weight_decay=5e-4), lr=0.05)
    schedule = LRSchedule(base_lr=0.05, warmup_lr=0.0, min_lr=2e-4, warmup_epochs=0, epochs=60,
                          steps_per_epoch=10, per_step=False)
    for step in (0, 155, 599):
        set_lr(opt, schedule.lr_at(step))
        lrs = _lr_by_name(model, opt)
        assert lrs["head.weight"][0] == pytest.approx(schedule.lr_at(step))
        assert lrs["blocks.3.attn.qkv.weight"][0] == pytest.approx(0.01 * schedule.lr_at(step))


def test_layer_decay_follows_depth():
    """timm's layering: T2T module + cls_token layer 0, block i layer i + 1, head last with factor 1."""
    model = _model()
    opt = build_optimizer(model, OptimConfig(name="adamw", layer_decay=0.5, weight_decay=0.05), lr=1.0)
    lrs = _lr_by_name(model, opt)
    last = DEPTH + 1
    assert lrs["head.weight"][0] == 1.0
    assert lrs["tokens_to_token.project.weight"][0] == pytest.approx(0.5 ** last)
    assert lrs["cls_token"][0] == pytest.approx(0.5 ** last)
    for i in range(DEPTH):
        assert lrs[f"blocks.{i}.attn.qkv.weight"][0] == pytest.approx(0.5 ** (last - 1 - i)), i
    assert lrs["norm.weight"][0] == lrs[f"blocks.{DEPTH - 1}.norm1.weight"][0]
    # With the transfer ratio on top, the backbone factors multiply.
    opt = build_optimizer(model, OptimConfig(layer_decay=0.5, backbone_lr_scale=0.1), lr=1.0)
    lrs = _lr_by_name(model, opt)
    assert lrs["head.bias"][0] == 1.0 and lrs["blocks.6.mlp.fc1.weight"][0] == pytest.approx(0.1 * 0.5)


def test_freeze_named_parts_and_ranges():
    model = _model()
    frozen = freeze_parameters(model, ["tokens_to_token", "blocks.0-4", "cls_token"])
    assert "tokens_to_token.project.weight" in frozen and "blocks.4.mlp.fc2.bias" in frozen
    assert not any(n.startswith(("blocks.5", "blocks.6", "head")) for n in frozen)
    opt = build_optimizer(model, OptimConfig(), lr=1e-3)
    in_optimizer = set(_lr_by_name(model, opt))
    assert in_optimizer == {n for n, p in model.named_parameters() if p.requires_grad}
    assert not in_optimizer & set(frozen) and "blocks.5.attn.qkv.weight" in in_optimizer
    # Frozen parameters get no gradient.
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    params = dict(model.named_parameters())
    assert params["blocks.0.attn.qkv.weight"].grad is None and params["blocks.6.attn.qkv.weight"].grad is not None


@pytest.mark.parametrize("spec,message", [("blocks.3-1", "range 3-1 is empty"), ("blocks.0-9", "'blocks.7' names no"),
                                          ("tokens_to_tokn", "module prefix such as")])
def test_bad_freeze_entries_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        freeze_parameters(_model(), [spec])


def test_freeze_key_reads_a_list_or_one_name(tmp_path):
    cfg = load_config(None, ["model.freeze=[tokens_to_token, blocks.0-6]"])
    assert cfg.model.freeze == ("tokens_to_token", "blocks.0-6")
    assert load_config(None, ["model.freeze=head"]).model.freeze == ("head",)
    with pytest.raises(ConfigError, match="optim.layer_decay=1.5"):
        load_config(None, ["optim.layer_decay=1.5"])


def test_default_groups_are_timms():
    """Without lr factors the groups are timm's (no-decay, then decay, same order): older runs resume."""
    from timm.optim import create_optimizer_v2
    model = _model()
    ours = build_optimizer(model, OptimConfig(), lr=1e-3).state_dict()["param_groups"]
    timms = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05).state_dict()["param_groups"]
    assert [(g["params"], g["weight_decay"]) for g in ours] == [(g["params"], g["weight_decay"]) for g in timms]


def test_nesterov_sgd():
    opt = build_optimizer(_model(), OptimConfig(name="sgd", momentum=0.8, nesterov=True), lr=0.1)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8
    with pytest.raises(ConfigError, match="nesterov"):
        build_optimizer(_model(), OptimConfig(name="sgd", momentum=0.0, nesterov=True), lr=0.1)


CIFAR_CONFIGS = ["t2t_vit_14_cifar10", "t2t_vit_14_cifar100", "t2t_vit_19_cifar10", "t2t_vit_19_cifar100"]


def _config(name):
    return load_config(os.path.join(RECIPE_DIR, f"{name}.yaml"))


def test_cifar_transfer_configs_share_one_recipe():
    first = _config(CIFAR_CONFIGS[0])
    for name in CIFAR_CONFIGS:
        cfg = _config(name)
        assert cfg.model.name == name[:10] and cfg.model.init_from == ("81.5_T2T_ViT_14.pth.tar" if "14" in name
                                                                      else "81.9_T2T_ViT_19.pth.tar")
        for section in ("data", "mixup", "optim", "sched", "train", "ema", "eval"):
            assert getattr(cfg, section) == getattr(first, section), (name, section)
        assert cfg.model.freeze == first.model.freeze and cfg.model.drop_path_rate == 0.1


def test_cifar_transfer_config_carries_the_official_recipe():
    from t2t.data.setup import build_train_tf
    from t2t.engine.optim import build_schedule
    cfg = _config("t2t_vit_14_cifar10")
    assert cfg.model.img_size == 224
    assert (cfg.data.train_transform, cfg.data.format) == ("cifar", "auto") and cfg.data.auto_augment is None
    assert cfg.data.mean == (0.4914, 0.4822, 0.4465) and cfg.data.std == (0.2023, 0.1994, 0.2010)
    assert cfg.mixup.mixup_alpha == cfg.mixup.cutmix_alpha == cfg.loss.label_smoothing == cfg.data.reprob == 0
    assert not cfg.ema.enabled and cfg.eval.crop_pct == 1.0 and cfg.train.epochs == 60
    crop = [t for t in build_train_tf(cfg.data, 224).transforms if type(t).__name__ == "RandomCrop"][0]
    assert crop.size == (224, 224) and crop.padding == 28
    # The optimizer and the lr of each part, at the recipe's global batch.
    model = timm.create_model(cfg.model.name, num_classes=10, img_size=224)
    freeze_parameters(model, cfg.model.freeze)
    opt = build_optimizer(model, cfg.optim, lr=cfg.optim.lr)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    lrs = _lr_by_name(model, opt)
    assert lrs["head.weight"] == (0.05, 5e-4)
    assert lrs["tokens_to_token.attention2.kqv.weight"] == (pytest.approx(5e-4), 5e-4)
    assert lrs["blocks.13.attn.proj.weight"] == (pytest.approx(5e-4), 5e-4)
    assert "cls_token" not in lrs and "norm.weight" not in lrs  # outside the official optimizer
    schedule = build_schedule(cfg.sched, base_lr=0.05, epochs=cfg.train.epochs, steps_per_epoch=100)
    assert schedule.lr_at(0) == schedule.lr_at(99) == 0.05
    assert schedule.lr_at(30 * 100) == pytest.approx(2e-4 + 0.5 * (0.05 - 2e-4))
    assert schedule.lr_at(60 * 100) == 2e-4
