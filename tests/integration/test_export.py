"""scripts/export.py: every format written, read back and checked against eager PyTorch."""
import os
import re
import sys

import pytest
import timm
import torch

import t2t
from t2t.inference import load_model
from test_predict import CLASSES, make_images, save_run_checkpoint
from train_helpers import ROOT, load_script

from t2t import export, predict


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "best.pth")
    save_run_checkpoint(path)
    return path


def _export(capsys, *args):
    code = export.main(list(args))
    io = capsys.readouterr()
    match = re.search(r"logit difference (\S+) ", io.out)
    return code, float(match.group(1)) if match else None, io


@pytest.mark.parametrize("fmt,name", [("torchscript", "model.ts"), ("export", "model.pt2"),
                                      ("safetensors", "model.safetensors"), ("onnx", "model.onnx")])
def test_exported_model_matches_eager(checkpoint, tmp_path, capsys, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the export extra is not installed")
    out = str(tmp_path / name)
    code, diff, io = _export(capsys, "--checkpoint", checkpoint, "--format", fmt, "--output", out)
    assert code == 0, io.err
    assert os.path.getsize(out) > 1_000_000 and diff is not None and diff <= 1e-4
    assert "state_dict_ema weights" in io.err  # EMA by default


def test_safetensors_file_serves_as_a_checkpoint(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "model.safetensors")
    assert _export(capsys, "--checkpoint", checkpoint, "--format", "safetensors", "--output", out, "--no-ema")[0] == 0
    loaded = load_model(out)  # model name, config and class names from the metadata
    assert loaded.classes == CLASSES and loaded.model_name == "t2t_vit_7" and loaded.img_size == 32
    reference = load_model(checkpoint, use_ema=False).model
    for a, b in zip(loaded.model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    # model.init_from / validate.py path: the loader reads it as a bare state dict.
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=10)
    assert t2t.load_pretrained_weights(model, out) == "state dict"  # new head, the rest loaded
    images = make_images(str(tmp_path / "imgs"), n=2)
    assert predict.main(["--checkpoint", out, "--images", *images, "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split(",")[1] in CLASSES


def test_difference_over_tolerance_fails(checkpoint, tmp_path, capsys, monkeypatch):
    def wrong(model, example, path):
        torch.save(model.state_dict(), path)
        return lambda x: model(x) + 1e-3  # an exporter that got the model slightly wrong

    monkeypatch.setattr(export, "export_torchscript", wrong)
    code, diff, io = _export(capsys, "--checkpoint", checkpoint, "--format", "torchscript",
                             "--output", str(tmp_path / "m.ts"))
    assert code == 1 and diff == pytest.approx(1e-3, rel=1e-2) and "OVER --atol" in io.out


def test_bad_arguments_are_one_line(checkpoint, tmp_path, capsys):
    code, _, io = _export(capsys, "--checkpoint", checkpoint, "--format", "export", "--output", str(tmp_path / "m.pt"))
    assert code == 2 and ".pt2" in io.err
    code, _, io = _export(capsys, "--checkpoint", str(tmp_path / "none.pth"), "--format", "onnx",
                          "--output", str(tmp_path / "m.onnx"))
    assert code == 2 and "none.pth" in io.err and len(io.err.strip().splitlines()) == 1
