"""Distilled (DeiT token) and token-labeling (aux head) T2T-ViT variants, and loading weights across them."""
import logging

import pytest
import timm
import torch

import t2t
from t2t.models import T2TViTDistilled, T2TViTTokenLabel, create_token_label_model, load_pretrained_weights

SMALL = dict(num_classes=5, img_size=32)


def test_distilled_training_returns_both_heads_and_eval_averages_them():
    model = timm.create_model("t2t_vit_7_distilled", **SMALL)
    assert isinstance(model, T2TViTDistilled)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 2 + 4, 256)  # class token, distillation token, 2x2 patches
    by_hand = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
    torch.testing.assert_close(model(x), by_hand)
    model.train()
    torch.manual_seed(0)
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 5)
    model.set_distilled_training(False)
    assert model(x).shape == (2, 5)


def test_distilled_intermediates_drop_both_prefix_tokens():
    model = timm.create_model("t2t_vit_7_distilled", **SMALL).eval()
    final, inter = model.forward_intermediates(torch.randn(1, 3, 32, 32), indices=2)
    assert final.shape == (1, 6, 256) and [t.shape for t in inter] == [(1, 256, 2, 2)] * 2


def test_plain_weights_load_into_distilled_variant(tmp_path, caplog):
    plain = timm.create_model("t2t_vit_7", **SMALL)
    path = tmp_path / "plain.pth"
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in plain.state_dict().items()}}, path)
    distilled = timm.create_model("t2t_vit_7_distilled", **SMALL)
    before = {k: v.clone() for k, v in distilled.state_dict().items()}
    with caplog.at_level(logging.INFO):
        load_pretrained_weights(distilled, path)
    got = distilled.state_dict()
    for key, value in plain.state_dict().items():
        assert torch.equal(got[key], value), key
    for key in ("dist_token", "head_dist.weight", "head_dist.bias"):
        assert torch.equal(got[key], before[key])  # kept at initialisation
    assert "left at their initialisation: dist_token, head_dist.weight, head_dist.bias" in caplog.text
    # and back: a distilled model's weights load into the plain variant without its extra parts
    torch.save(distilled.state_dict(), tmp_path / "distilled.pth")
    plain2 = timm.create_model("t2t_vit_7", **SMALL)
    load_pretrained_weights(plain2, tmp_path / "distilled.pth")
    assert torch.equal(plain2.head.weight, plain.head.weight)


def test_token_label_training_and_eval_rule():
    model = create_token_label_model("t2t_vit_7", **SMALL)
    assert isinstance(model, T2TViTTokenLabel)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    cls_logits, aux_logits = model(x)
    assert cls_logits.shape == (3, 5) and aux_logits.shape == (3, 4, 5)
    model.eval()
    feats = model.forward_features(x)
    aux = model.aux_head(feats[:, 1:])
    want = model.head(feats[:, 0]) + 0.5 * torch.stack([aux[b].max(dim=0).values for b in range(3)])
    torch.testing.assert_close(model(x), want)


def _release_layout(model_with_aux):
    """A TokenLabeling-style release file: EMA weights under state_dict_ema, DDP prefixes, aux_head.* keys."""
    return {"state_dict_ema": {f"module.{k}": v.clone() for k, v in model_with_aux.state_dict().items()},
            "epoch": 309, "arch": "T2t_vit_24"}


def test_release_layout_with_aux_head_loads_strictly(tmp_path):
    source = create_token_label_model("t2t_vit_7", **SMALL)
    torch.save(_release_layout(source), tmp_path / "tl.pth.tar")
    target = create_token_label_model("t2t_vit_7", **SMALL)
    load_pretrained_weights(target, tmp_path / "tl.pth.tar")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    plain = timm.create_model("t2t_vit_7", **SMALL)  # without the aux head: aux_head.* are left out
    load_pretrained_weights(plain, tmp_path / "tl.pth.tar")
    assert torch.equal(plain.head.weight, source.head.weight)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(plain.eval()(x), source.head(source.eval().forward_features(x)[:, 0]))


def test_file_without_aux_head_loads_into_token_label_model(tmp_path):
    plain = timm.create_model("t2t_vit_7", **SMALL)
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    model = create_token_label_model("t2t_vit_7", **SMALL)
    aux_before = model.aux_head.weight.clone()
    load_pretrained_weights(model, tmp_path / "plain.pth")
    assert torch.equal(model.aux_head.weight, aux_before)
    assert torch.equal(model.head.weight, plain.head.weight)


def test_other_class_count_drops_every_classifier(tmp_path):
    source = create_token_label_model("t2t_vit_7", **SMALL)
    torch.save(source.state_dict(), tmp_path / "tl.pth")
    model = create_token_label_model("t2t_vit_7", num_classes=3, img_size=32)
    load_pretrained_weights(model, tmp_path / "tl.pth")
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_a_real_mismatch_is_still_refused(tmp_path):
    other = timm.create_model("t2t_vit_10", **SMALL)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(t2t.models.CheckpointError, match="does not fit"):
        load_pretrained_weights(timm.create_model("t2t_vit_7_distilled", **SMALL), tmp_path / "other.pth")


def test_token_label_needs_a_t2t_name():
    with pytest.raises(ValueError, match="plain T2T-ViT"):
        create_token_label_model("resnet50")
