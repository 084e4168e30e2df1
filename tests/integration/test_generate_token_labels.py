"""scripts/generate_token_labels.py: the maps a teacher gives, resuming, refusing to mix teachers, torchrun."""
import logging
import os
import subprocess

import pytest
import timm
import torch

import t2t  # noqa: F401
from t2t.data.token_label import read_label_map
from t2t.tools.token_labels import dense_logits
from train_helpers import ROOT, load_script, make_data, torchrun_cmd

main = load_script("generate_token_labels").main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tl")
    data = make_data(str(root / "data"), classes=3, train=3, val=1, size=40)
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    torch.save({"arch": "t2t_vit_7", "state_dict_ema": model.state_dict()}, root / "teacher.pth")
    torch.manual_seed(1)
    other = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    torch.save({"arch": "t2t_vit_7", "state_dict_ema": other.state_dict()}, root / "other.pth")
    return root, data, model.eval()


def _args(root, data, out, teacher="teacher.pth"):
    return ["--teacher", str(root / teacher), "--data-dir", data, "--output", str(out), "--topk", "2",
            "--img-size", "32", "--batch-size", "4", "--workers", "0", "--log-interval", "1"]


def _labels(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, files in os.walk(out) for f in files
                  if f.endswith(".pt"))


def test_maps_are_the_teachers_top_k_per_token(setup, tmp_path):
    root, data, model = setup
    out = tmp_path / "labels"
    assert main(_args(root, data, out)) == 0
    images = sorted(os.path.relpath(os.path.join(d, f), os.path.join(data, "train"))
                    for d, _, files in os.walk(os.path.join(data, "train")) for f in files)
    assert _labels(out) == sorted(os.path.splitext(p)[0] + ".pt" for p in images)
    # one image by hand: resize whole, normalise, the head on each patch token
    from PIL import Image

    from t2t.data.transforms import ToNormalizedTensor
    img = Image.open(os.path.join(data, "train", images[0])).convert("RGB").resize((32, 32), Image.BICUBIC)
    x = ToNormalizedTensor()(img)[None]
    with torch.no_grad():
        tokens = model.forward_features(x)[0, 1:]  # (4, D)
        scores = model.head(tokens).t().reshape(3, 2, 2)
    values, indices = read_label_map(str(out / (os.path.splitext(images[0])[0] + ".pt")))
    want_values, want_indices = scores.topk(2, dim=0)
    assert torch.equal(indices, want_indices)
    torch.testing.assert_close(values, want_values.half().float())
    with torch.no_grad():
        torch.testing.assert_close(dense_logits(model, x)[0], scores)


def test_interrupted_generation_continues_and_other_teacher_is_refused(setup, tmp_path, caplog, capsys):
    root, data, _ = setup
    out = tmp_path / "labels"
    assert main(_args(root, data, out)) == 0
    files = _labels(out)
    os.remove(out / files[0])
    kept = {f: os.stat(out / f).st_mtime_ns for f in files[1:]}
    with caplog.at_level(logging.INFO):
        assert main(_args(root, data, out)) == 0
    assert "1 images to label, 8 already done" in caplog.text
    assert _labels(out) == files and all(os.stat(out / f).st_mtime_ns == t for f, t in kept.items())
    assert main(_args(root, data, out, teacher="other.pth")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.pth" in err[0] and "teacher.pth" in err[0]


@pytest.mark.slow
def test_two_processes_label_each_image_once(setup, tmp_path):
    root, data, _ = setup
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(_args(root, data, single)) == 0
    cmd = torchrun_cmd("--standalone", "--nproc_per_node=2", script="scripts/generate_token_labels.py") + [
        *_args(root, data, double)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 of 2: 5 images" in proc.stderr and "rank 1 of 2: 4 images" in proc.stderr
    assert _labels(single) == _labels(double)
    for name in _labels(single):
        (v1, i1), (v2, i2) = read_label_map(str(single / name)), read_label_map(str(double / name))
        assert torch.equal(i1, i2)
        torch.testing.assert_close(v1, v2, atol=2e-3, rtol=0)
