"""validate.py end to end on a tiny T2T-ViT and a generated class-folder set.

The expected numbers are computed here independently: the paper's eval transform written out with
PIL (shorter side to floor(img_size / 0.9), bicubic; centre crop; ImageNet mean/std), the model run
on the whole set at once, and the hits counted by hand.
"""
import argparse
import json
import math
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import t2t
from zygote import run_script
from train_helpers import ROOT

VALIDATE = os.path.join(ROOT, "validate.py")
MODEL = "t2t_vit_7"
IMG_SIZE = 32
COUNTS = (2, 1, 1, 2, 1, 1, 1)  # images per class: 7 classes, 9 images (odd, for the 2-rank test)
NUM_CLASSES = len(COUNTS)
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def make_image_folder(root, counts=COUNTS, seed=0):
    """Class folders c0, c1, ... of small random PNG/JPEG images of varied shapes; returns [(path, label)]."""
    rng = np.random.default_rng(seed)
    samples = []
    for label, count in enumerate(counts):
        folder = os.path.join(root, f"c{label}")
        os.makedirs(folder)
        for i in range(count):
            w, h = (40, 36) if (label + i) % 2 else (34, 46)
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            path = os.path.join(folder, f"img{i}.{'png' if i % 2 else 'jpg'}")
            image.save(path)
            samples.append((path, label))
    return samples


def paper_eval_transform(path, img_size, crop_pct=0.9):
    """Shorter side to floor(img_size / crop_pct) (bicubic), centre crop, normalise: (3, S, S)."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    short = math.floor(img_size / crop_pct)
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - img_size) / 2)), int(round((new_w - img_size) / 2))
    image = image.crop((left, top, left + img_size, top + img_size))
    array = (np.asarray(image, dtype=np.float64) / 255 - MEAN) / STD
    return torch.from_numpy(array).permute(2, 0, 1).float()


def tiny_model(seed, img_size=IMG_SIZE, num_classes=NUM_CLASSES, name=MODEL):
    torch.manual_seed(seed)
    return timm.create_model(name, img_size=img_size, num_classes=num_classes).eval()


@torch.no_grad()
def hand_metrics(model, samples, img_size=IMG_SIZE, crop_pct=0.9):
    images = torch.stack([paper_eval_transform(p, img_size, crop_pct) for p, _ in samples])
    targets = torch.tensor([label for _, label in samples])
    logits = model.eval()(images)
    k = min(5, logits.shape[1])
    top5 = logits.topk(k, dim=1).indices
    return {
        "top1": 100.0 * (top5[:, 0] == targets).sum().item() / len(samples),
        "top5": 100.0 * (top5 == targets[:, None]).any(dim=1).sum().item() / len(samples),
        "loss": F.cross_entropy(logits, targets).item(),
        "count": len(samples),
    }


def prefixed(state_dict, prefix="module."):
    return {prefix + k: v for k, v in state_dict.items()}


def save_layouts(folder, model_sd, ema_sd):
    """The same tiny weights in every layout validate.py must read; returns {layout: path}."""
    layouts = {
        # Ours (t2t.engine.run): model + EMA + the run's config as plain data.
        "ours": {"format": 1, "arch": MODEL, "model": model_sd, "state_dict_ema": ema_sd, "epoch": 3,
                 "config": {"model": {"name": MODEL, "img_size": IMG_SIZE}}},
        # A timm-style training checkpoint with both entries.
        "state_dict": {"state_dict": model_sd, "state_dict_ema": ema_sd, "epoch": 3},
        # Official release: EMA weights with the DDP prefix and the argparse command line.
        "official": {"state_dict_ema": prefixed(ema_sd), "arch": "T2t_vit_7", "epoch": 309, "version": 2,
                     "args": argparse.Namespace(model="T2t_vit_7", img_size=224, lr=1e-3)},
        # CIFAR transfer files.
        "cifar": {"net": prefixed(model_sd), "acc": 91.5, "epoch": 60},
        "bare": model_sd,
    }
    paths = {}
    for name, obj in layouts.items():
        paths[name] = os.path.join(folder, f"{name}.pth")
        torch.save(obj, paths[name])
    return paths


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("validate")
    samples = make_image_folder(str(root / "imagenet" / "val"))
    model, ema = tiny_model(1), tiny_model(2)
    paths = save_layouts(str(root), model.state_dict(), ema.state_dict())
    return argparse.Namespace(root=root, data=str(root / "imagenet"), samples=samples, model=model, ema=ema,
                              paths=paths)


def run_validate(*args, timeout=300):
    return run_script([VALIDATE, "--device", "cpu", *args], cwd=ROOT, timeout=timeout)


def validate_ok(tmp_path, *args):
    out = tmp_path / "results.json"
    proc = run_validate(*args, "--results-file", out)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == results  # printed and written alike
    return results, proc.stdout


def assert_matches(results, expected):
    assert results["count"] == expected["count"]
    assert results["top1"] == expected["top1"]
    assert results["top5"] == expected["top5"]
    assert results["loss"] == pytest.approx(expected["loss"], rel=1e-4)


@pytest.mark.parametrize("layout, weights, entry", [
    ("ours", "ema", "state_dict_ema"),
    ("state_dict", "ema", "state_dict_ema"),
    ("official", "ema", "state_dict_ema"),
    ("cifar", "model", "net"),
    ("bare", "model", "state dict"),
])
def test_every_layout_matches_hand_count(setup, tmp_path, layout, weights, entry):
    # No --img-size: the 32 px position table of the checkpoint sets it. The dataset root is given,
    # so its val/ folder is used.
    results, stdout = validate_ok(tmp_path, "--data-dir", setup.data, "-m", MODEL, "--checkpoint",
                                  setup.paths[layout], "--batch-size", 4, "--workers", 0)
    expected = hand_metrics(setup.ema if weights == "ema" else setup.model, setup.samples)
    assert_matches(results, expected)
    assert results["weights"] == weights and results["weights_entry"] == entry
    assert results["model"] == MODEL and results["img_size"] == IMG_SIZE and results["crop_pct"] == 0.9
    assert results["checkpoint"] == setup.paths[layout]
    assert results["images_per_sec"] > 0
    assert f"Using the {weights} weights" in stdout


def test_no_ema_uses_the_model_weights(setup, tmp_path):
    args = ("--data-dir", os.path.join(setup.data, "val"), "-m", MODEL, "--checkpoint", setup.paths["ours"],
            "--img-size", IMG_SIZE, "--batch-size", 5, "--workers", 0)
    model_results, _ = validate_ok(tmp_path, *args, "--no-ema")
    assert model_results["weights"] == "model" and model_results["weights_entry"] == "model"
    assert_matches(model_results, hand_metrics(setup.model, setup.samples))
    ema_results = hand_metrics(setup.ema, setup.samples)
    assert model_results["loss"] != pytest.approx(ema_results["loss"], rel=1e-4)


def test_known_classifier_gives_known_top1_and_top5(setup, tmp_path):
    # A classifier that ignores the image and ranks classes 3 > 0 > 6 > 1 > 5 > 2 > 4: every image is
    # called class 3, and the top five are {3, 0, 6, 1, 5}.
    model = tiny_model(3)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([6.0, 4.0, 2.0, 7.0, 1.0, 3.0, 5.0]))
    torch.save(model.state_dict(), tmp_path / "fixed.pth")
    results, _ = validate_ok(tmp_path, "--data-dir", setup.data, "-m", MODEL, "--checkpoint",
                             tmp_path / "fixed.pth", "--batch-size", 4, "--workers", 0)
    assert results["count"] == 9
    assert results["top1"] == 100.0 * COUNTS[3] / 9
    assert results["top5"] == 100.0 * sum(COUNTS[c] for c in (3, 0, 6, 1, 5)) / 9


def test_larger_eval_size_interpolates_positions(setup, tmp_path):
    results, stdout = validate_ok(tmp_path, "--data-dir", setup.data, "-m", MODEL, "--checkpoint",
                                  setup.paths["bare"], "--img-size", 48, "--batch-size", 9, "--workers", 0)
    assert "pos_embed" in stdout and "10 to 10" not in stdout  # 1 + 2x2 -> 1 + 3x3 positions
    model = tiny_model(0, img_size=48)
    t2t.load_pretrained_weights(model, setup.paths["bare"])
    assert results["img_size"] == 48
    assert_matches(results, hand_metrics(model, setup.samples, img_size=48))


def test_settings_from_run_config_and_flags_override(setup, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  name: {MODEL}\n  img_size: {IMG_SIZE}\n"
                      "eval:\n  batch_size: 4\n  crop_pct: 0.9\ndata:\n  workers: 0\n")
    results, _ = validate_ok(tmp_path, "--data-dir", setup.data, "-c", config, "--checkpoint",
                             setup.paths["ours"], "--crop-pct", 1.0)
    assert results["model"] == MODEL and results["img_size"] == IMG_SIZE and results["crop_pct"] == 1.0
    assert_matches(results, hand_metrics(setup.ema, setup.samples, crop_pct=1.0))


def assert_user_error(proc, *named):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2t-validate: error:"), proc.stderr
    for value in named:
        assert str(value) in lines[0], lines[0]


def test_error_checkpoint_of_another_model(setup):
    proc = run_validate("--data-dir", setup.data, "-m", "t2t_vit_10", "--checkpoint", setup.paths["ours"],
                        "--workers", 0)
    assert_user_error(proc, "t2t_vit_10", setup.paths["ours"], "'t2t_vit_7'")


def test_error_class_count_mismatch(setup, tmp_path):
    folder = tmp_path / "three"
    make_image_folder(str(folder), counts=(1, 1, 1))
    proc = run_validate("--data-dir", folder, "-m", MODEL, "--checkpoint", setup.paths["bare"], "--workers", 0)
    assert_user_error(proc, f"has {NUM_CLASSES} classes", "3 class folders", folder)


def test_error_missing_folder(setup, tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_validate("--data-dir", missing, "-m", MODEL, "--checkpoint", setup.paths["bare"])
    assert_user_error(proc, missing)


def test_error_unreadable_image(setup, tmp_path):
    folder = tmp_path / "broken"
    make_image_folder(str(folder))
    bad = folder / "c2" / "img9.jpg"
    bad.write_bytes(b"this is not a jpeg")
    # Through a loader worker process: the message must survive the worker's re-raise.
    proc = run_validate("--data-dir", folder, "-m", MODEL, "--checkpoint", setup.paths["bare"], "--workers", 1)
    assert_user_error(proc, bad)


def test_error_unreadable_checkpoint(setup, tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(open(setup.paths["bare"], "rb").read()[:1000])
    proc = run_validate("--data-dir", setup.data, "-m", MODEL, "--checkpoint", bad, "--workers", 0)
    assert_user_error(proc, bad)
    proc = run_validate("--data-dir", setup.data, "-m", MODEL, "--checkpoint", tmp_path / "absent.pth")
    assert_user_error(proc, tmp_path / "absent.pth")


def test_prepare_imagenet_val_then_validate(setup, tmp_path):
    """The flat official layout + either label file -> class folders of symlinks that validate.py reads."""
    script = os.path.join(ROOT, "scripts", "prepare_imagenet_val.py")
    raw = tmp_path / "raw"
    raw.mkdir()
    synsets = [f"n{label:08d}" for _, label in setup.samples]
    for number, (path, _) in enumerate(setup.samples, start=1):
        Image.open(path).save(raw / f"ILSVRC2012_val_{number:08d}.JPEG", format="PNG")
    (tmp_path / "labels.txt").write_text("\n".join(synsets) + "\n")
    rows = [f"ILSVRC2012_val_{n:08d},{s} 1 2 30 40 {s} 5 6 7 8" for n, s in enumerate(synsets, start=1)]
    (tmp_path / "solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")

    def prepare(labels, out):
        return run_script([script, "--val-dir", raw, "--labels", tmp_path / labels, "--out", tmp_path / out],
                          timeout=120)

    expected = sorted(f"{s}/ILSVRC2012_val_{n:08d}.JPEG" for n, s in enumerate(synsets, start=1))
    for labels, out in (("labels.txt", "from_txt"), ("solution.csv", "from_csv")):
        assert prepare(labels, out).returncode == 0
        files = list((tmp_path / out).rglob("*.JPEG"))
        assert sorted(str(p.relative_to(tmp_path / out)) for p in files) == expected
        assert all(p.is_symlink() for p in files)
    assert len(list(raw.iterdir())) == len(setup.samples)  # the source is untouched

    again = prepare("labels.txt", "from_txt")  # refuses to overwrite
    assert again.returncode == 2 and "already exist" in again.stderr
    (tmp_path / "bad.txt").write_text("n00000000\nnot-a-synset\n")
    bad = prepare("bad.txt", "bad_out")
    assert bad.returncode == 2 and "line 2" in bad.stderr and not (tmp_path / "bad_out").exists()

    results, _ = validate_ok(tmp_path, "--data-dir", tmp_path / "from_csv", "-m", MODEL, "--checkpoint",
                             setup.paths["bare"], "--batch-size", 9, "--workers", 0)
    assert_matches(results, hand_metrics(setup.model, setup.samples))


def test_error_class_names_differ_from_the_checkpoints(setup, tmp_path, capsys):
    from t2t import validate

    ckpt = torch.load(setup.paths["ours"], weights_only=True)
    ckpt["run"] = {"classes": [f"c{i}" for i in range(NUM_CLASSES)]}
    path = tmp_path / "trained.pth"
    torch.save(ckpt, path)
    folder = tmp_path / "renamed"
    make_image_folder(str(folder))
    os.rename(folder / "c3", folder / "c3_renamed")  # same count, label 3 now means another folder
    args = ["--device", "cpu", "--data-dir", str(folder), "-m", MODEL, "--checkpoint", str(path), "--workers", "0"]
    assert validate.main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'c3'" in err and "'c3_renamed'" in err and "--allow-class-mismatch" in err
    assert validate.main(args + ["--allow-class-mismatch", "--batch-size", "9"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 9


def test_folders_named_by_class_index_score_as_their_classes(tmp_path):
    """ImageNet-V2's layout ('0' ... 'N-1', no class list in a weights-only file): folder k is class k, so the
    numbers equal those of the same images under names that sort in class order ('10' sorted as a string
    would come before '2' and every image past class 1 would be scored against another label)."""
    num_classes = 12
    samples = make_image_folder(str(tmp_path / "made"), counts=(1,) * num_classes, seed=3)
    for path, label in samples:  # c0 ... c11 -> n00 ... n11 (class order) and 0 ... 11 (V2)
        for layout, name in (("named", f"n{label:02d}"), ("v2", str(label))):
            folder = tmp_path / layout / name
            folder.mkdir(parents=True, exist_ok=True)
            os.link(path, folder / os.path.basename(path))
    model = tiny_model(4, num_classes=num_classes)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    common = ("-m", MODEL, "--checkpoint", tmp_path / "weights.pth", "--batch-size", 5, "--workers", 0)
    named, _ = validate_ok(tmp_path / "named", "--data-dir", tmp_path / "named", *common)
    v2, stdout = validate_ok(tmp_path / "v2", "--data-dir", tmp_path / "v2", *common)
    assert_matches(v2, hand_metrics(model, samples))
    assert (v2["top1"], v2["top5"], v2["loss"], v2["count"]) == (named["top1"], named["top5"], named["loss"],
                                                                 named["count"])
    assert "named by class index" in stdout
    # Index names that are not 0 ... N-1 cannot be paired with the model's outputs: refused in one line.
    os.rename(tmp_path / "v2" / "0", tmp_path / "v2" / str(num_classes))
    proc = run_validate("--data-dir", tmp_path / "v2", *common)
    assert proc.returncode == 2 and "named by class index, but not 0 ... 11 (no folder '0')" in proc.stderr
    assert "Traceback" not in proc.stderr
