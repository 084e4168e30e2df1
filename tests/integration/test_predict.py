"""predict.py: top-k CSV and JSON with the checkpoint's class names and eval transform; bad images skipped."""
import csv
import json
import os
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from t2t.config import load_config
from t2t.inference import load_model
from train_helpers import ROOT
from t2t import predict

CLASSES = ["cat", "dog", "fox"]


def save_run_checkpoint(path: str, classes=CLASSES, **overrides) -> torch.nn.Module:
    """A checkpoint laid out as train.py writes it (model, EMA, config, run), for a tiny model."""
    cfg = load_config(None, ["model.name=t2t_vit_7", "model.img_size=32", "eval.crop_pct=1.0",
                             "eval.interpolation=bilinear", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]",
                             *[f"{k}={v}" for k, v in overrides.items()]])
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=len(classes)).eval()
    ema = timm.create_model("t2t_vit_7", img_size=32, num_classes=len(classes)).eval()
    torch.save({"model": model.state_dict(), "state_dict_ema": ema.state_dict(), "config": cfg.to_dict(),
                "run": {"classes": list(classes)}, "arch": "t2t_vit_7"}, path)
    return ema


def make_images(folder, n=5, size=(40, 48)) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"img{i}.{'png' if i % 2 else 'jpg'}")
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _run(capsys, *args):
    code = predict.main(list(args))
    return code, capsys.readouterr()


def test_csv_rows_match_the_model(tmp_path, capsys):
    ckpt = str(tmp_path / "best.pth")
    ema = save_run_checkpoint(ckpt)
    paths = make_images(str(tmp_path / "imgs"))
    out = str(tmp_path / "preds.csv")
    code, io = _run(capsys, "--checkpoint", ckpt, "--images", str(tmp_path / "imgs"), "--topk", "2",
                    "--output", out, "--batch-size", "2", "--workers", "0")
    assert code == 0, io.err
    with open(out) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    assert [r[0] for r in rows[1:]] == sorted(paths)
    # The EMA weights and the stored eval transform (resize 32, no crop, the run's mean/std).
    transform = load_model(ckpt).transform
    assert "Resize(size=32, interpolation=bilinear" in repr(transform) and "0.25" in repr(transform)
    with torch.no_grad():
        probs = ema(torch.stack([transform(Image.open(p).convert("RGB")) for p in sorted(paths)])).softmax(-1)
    for row, p in zip(rows[1:], probs):
        top = p.topk(2)
        assert row[1] == CLASSES[top.indices[0]] and row[3] == CLASSES[top.indices[1]]
        assert float(row[2]) == pytest.approx(top.values[0].item(), abs=1e-6)
        assert float(row[2]) >= float(row[4])
    assert "[##############################] 5/5 images" in io.err


def test_json_output_and_model_weights(tmp_path, capsys):
    ckpt = str(tmp_path / "best.pth")
    save_run_checkpoint(ckpt)
    paths = make_images(str(tmp_path / "imgs"), n=3)
    out = str(tmp_path / "preds.json")
    code, io = _run(capsys, "--checkpoint", ckpt, "--images", *paths, "--topk", "5", "--output", out,
                    "--no-ema", "--workers", "2")
    assert code == 0, io.err
    with open(out) as f:
        data = json.load(f)
    assert [d["path"] for d in data] == paths
    assert [p["label"] for p in data[0]["predictions"]] and len(data[0]["predictions"]) == 3  # k capped at 3 classes
    assert sum(p["prob"] for p in data[0]["predictions"]) == pytest.approx(1.0, abs=1e-5)
    assert "model weights" in io.err


def test_unreadable_images_are_reported_and_skipped(tmp_path, capsys):
    ckpt = str(tmp_path / "best.pth")
    save_run_checkpoint(ckpt)
    paths = make_images(str(tmp_path / "imgs"), n=3)
    bad = tmp_path / "imgs" / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    out = str(tmp_path / "preds.csv")
    code, io = _run(capsys, "--checkpoint", ckpt, "--images", str(tmp_path / "imgs"), "--output", out,
                    "--workers", "0")
    assert code == 1
    assert "skipped unreadable image" in io.err and "broken.jpg" in io.err and "1 of 4 images" in io.err
    with open(out) as f:
        assert [r[0] for r in list(csv.reader(f))[1:]] == sorted(paths)


def test_official_weights_get_imagenet_names(tmp_path, capsys):
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=1000)
    ckpt = str(tmp_path / "71.7_T2T_ViT_7.pth.tar")
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    make_images(str(tmp_path / "imgs"), n=2)
    code, io = _run(capsys, "--checkpoint", ckpt, "--images", str(tmp_path / "imgs"), "--workers", "0")
    assert code == 2 and "--model" in io.err  # the file records no model name
    code, io = _run(capsys, "--checkpoint", ckpt, "--model", "t2t_vit_7", "--images", str(tmp_path / "imgs"),
                    "--topk", "1", "--workers", "0")
    assert code == 0, io.err
    rows = list(csv.reader(io.out.splitlines()))
    from timm.data import ImageNetInfo
    assert len(rows) == 3 and rows[1][1] in ImageNetInfo().label_descriptions()
    assert "t2t_vit_7 @32" in io.err  # the size read from the position table


def test_missing_inputs_are_one_line(tmp_path, capsys):
    ckpt = str(tmp_path / "best.pth")
    save_run_checkpoint(ckpt)
    code, io = _run(capsys, "--checkpoint", ckpt, "--images", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in io.err and len(io.err.strip().splitlines()) == 1
    code, io = _run(capsys, "--checkpoint", str(tmp_path / "none.pth"), "--images", ckpt)
    assert code == 2 and "none.pth" in io.err
