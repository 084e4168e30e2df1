import argparse
import logging

import pytest
import timm
import torch

import t2t  # noqa: F401  (registers the models with timm)
from marks import slow_except
from t2t.models import CheckpointError, load_pretrained_weights


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    return timm.create_model("t2t_vit_7", num_classes=10).eval()


def _prefixed(sd):
    return {f"module.{k}": v for k, v in sd.items()}


def _perturbed(sd):
    return {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}


LAYOUTS = {
    # Release files and timm training checkpoints: EMA weights under state_dict_ema, Namespace args.
    "official_training": lambda sd: {
        "epoch": 309, "arch": "t2t_vit_7", "state_dict": _prefixed(_perturbed(sd)), "state_dict_ema": _prefixed(sd),
        "optimizer": {}, "args": argparse.Namespace(model="t2t_vit_7", lr=1e-3), "amp_scaler": {}, "metric": 71.7,
        "version": 2},
    "release_ema_only": lambda sd: {"state_dict_ema": sd},
    "plain_state_dict": lambda sd: {"state_dict": _prefixed(sd)},
    "model_key": lambda sd: {"model": sd, "epoch": 3},
    "cifar_net": lambda sd: {"net": _prefixed(sd), "acc": 97.1, "epoch": 59},
    "bare": lambda sd: sd,
    "compiled_ddp": lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()},
}
EXPECTED_SOURCE = {"official_training": "state_dict_ema", "release_ema_only": "state_dict_ema",
                   "plain_state_dict": "state_dict", "model_key": "model", "cifar_net": "net", "bare": "state dict",
                   "compiled_ddp": "state dict"}


@pytest.mark.parametrize("layout", slow_except(sorted(LAYOUTS), "bare", "official_training"))
def test_every_official_layout_loads_strictly(layout, source, tmp_path):
    path = tmp_path / "weights.pth.tar"
    torch.save(LAYOUTS[layout](source.state_dict()), path)
    model = timm.create_model("t2t_vit_7", num_classes=10).eval()
    used = load_pretrained_weights(model, path)
    assert used == EXPECTED_SOURCE[layout]
    for k, v in source.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_no_ema_picks_the_model_weights(source, tmp_path):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(LAYOUTS["official_training"](source.state_dict()), path)
    model = timm.create_model("t2t_vit_7", num_classes=10)
    assert load_pretrained_weights(model, path, use_ema=False) == "state_dict"
    assert torch.equal(model.head.bias, source.head.bias + 1)


@pytest.mark.parametrize("layout", ["official_training", "cifar_net", "bare"])
def test_timm_pretrained_path_with_file_overlay(layout, source, tmp_path):
    path = tmp_path / "release.pth.tar"
    torch.save(LAYOUTS[layout](source.state_dict()), path)
    model = timm.create_model("t2t_vit_7", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    assert torch.equal(model.tokens_to_token.attention1.w, source.tokens_to_token.attention1.w)
    assert torch.equal(model.head.weight, source.head.weight)


def test_pos_embed_is_interpolated_to_384(source, tmp_path, caplog):
    path = tmp_path / "w.pth"
    torch.save({"state_dict_ema": source.state_dict()}, path)
    model = timm.create_model("t2t_vit_7", num_classes=10, img_size=384)
    with caplog.at_level(logging.INFO):
        load_pretrained_weights(model, path)
    assert "Resized pos_embed from 197 to 577" in caplog.text
    assert model.pos_embed.shape == (1, 577, 256)
    assert torch.equal(model.pos_embed[0, 0], source.pos_embed[0, 0])  # class row kept
    old_grid = source.pos_embed[0, 1:].reshape(1, 14, 14, 256).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(old_grid, size=(24, 24), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.pos_embed[0, 1:], expected.permute(0, 2, 3, 1).reshape(576, 256))
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.randn(1, 3, 384, 384))).all()


def test_different_class_count_drops_the_head(source, tmp_path, caplog):
    path = tmp_path / "w.pth"
    torch.save({"state_dict_ema": source.state_dict()}, path)
    model = timm.create_model("t2t_vit_7", num_classes=3)
    head_before = model.head.weight.clone()
    with caplog.at_level(logging.INFO):
        load_pretrained_weights(model, path)
    assert "Classifier not loaded" in caplog.text and "10 classes" in caplog.text
    assert torch.equal(model.head.weight, head_before)
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_another_architecture_is_a_clear_error(source, tmp_path):
    path = tmp_path / "t7.pth"
    torch.save({"state_dict_ema": source.state_dict()}, path)
    model = timm.create_model("t2t_vit_t_14", num_classes=10)
    with pytest.raises(CheckpointError) as err:
        load_pretrained_weights(model, path)
    message = str(err.value)
    assert str(path) in message
    assert "missing" in message and "tokens_to_token.attention1.attn.qkv.weight" in message
    assert "unexpected" in message and "tokens_to_token.attention1.w" in message


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pth"):
        load_pretrained_weights(timm.create_model("t2t_vit_7"), path)
    empty = tmp_path / "empty.pth"
    torch.save({"epoch": 3}, empty)
    with pytest.raises(CheckpointError, match="holds no weights"):
        load_pretrained_weights(timm.create_model("t2t_vit_7"), empty)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained_weights(timm.create_model("t2t_vit_7"), tmp_path / "missing.pth")
