"""Training with token_label.dir: block labels train as per-image labels of the same values, bit for bit; a SIGKILLed
run on blocks resumes bit-identically; a missing map or block stops train.py in one line."""
import json
import os
import shutil
import signal

import pytest
import torch

from t2t.data.label_blocks import block_path
from t2t.data.token_label import label_path, save_label_map
from t2t.tools.token_labels import main as token_labels_main
from train_helpers import TINY_CONFIG, assert_same_run, kill_run_at, load, make_data, run_train, write_config

pytestmark = pytest.mark.slow

TOKEN_LABEL_CONFIG = TINY_CONFIG + """\
token_label: {mix_token_alpha: 1.0}
"""
# The tiny recipe with token labels: aux head, MixToken instead of mixup / CutMix, RandAugment kept.
OVERRIDES = ["model.token_label=true", "mixup.mixup_alpha=0", "mixup.cutmix_alpha=0"]


def write_random_labels(data_dir: str, label_dir: str, topk: int = 2, grid: int = 3) -> None:
    """A label folder as scripts/generate_token_labels.py writes it, with random teacher scores."""
    train = os.path.join(data_dir, "train")
    classes = sorted(os.listdir(train))
    g = torch.Generator().manual_seed(0)
    for name in classes:
        for image in sorted(os.listdir(os.path.join(train, name))):
            values, indices = torch.randn(len(classes), grid, grid, generator=g).mul(3).topk(topk, dim=0)
            save_label_map(label_path(label_dir, f"{name}/{image}"), values, indices, teacher="0" * 64)
    with open(os.path.join(label_dir, "labels.json"), "w") as f:
        json.dump({"path": "teacher.pth", "size": 1, "sha256": "0" * 64, "model": "t2t_vit_7", "topk": topk,
                   "img_size": 32, "classes": classes}, f)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    data_dir = make_data(str(tmp_path_factory.mktemp("data")))
    label_dir = str(tmp_path_factory.mktemp("labels"))
    write_random_labels(data_dir, label_dir)
    return data_dir, label_dir


@pytest.fixture(scope="module")
def blocks(labelled, tmp_path_factory):
    """The same maps imported into the block layout (blocks of 10 of the 36 images)."""
    data_dir, label_dir = labelled
    out = str(tmp_path_factory.mktemp("blocks") / "labels")
    assert token_labels_main(["import", "--from", label_dir, "--data-dir", data_dir, "--output", out,
                              "--block-size", "10"]) == 0
    return out


def test_block_labels_train_as_per_image_labels_of_the_same_values(labelled, blocks, tmp_path):
    data_dir, label_dir = labelled
    config = write_config(str(tmp_path), TOKEN_LABEL_CONFIG)
    common = ["--data-dir", data_dir, "train.max_steps=5", *OVERRIDES]
    run_train("-c", config, "--output", str(tmp_path / "blocks"), f"token_label.dir={blocks}", *common)
    run_train("-c", config, "--output", str(tmp_path / "per-image"), f"token_label.dir={label_dir}", *common)
    assert_same_run(str(tmp_path / "blocks" / "step-00000005.pth"), str(tmp_path / "per-image" / "step-00000005.pth"))


def test_killed_token_label_run_on_blocks_resumes_exactly(labelled, blocks, tmp_path):
    data_dir, _ = labelled
    config = write_config(str(tmp_path), TOKEN_LABEL_CONFIG)
    common = ["--data-dir", data_dir, "data.workers=2", "checkpoint.every_steps=4", f"token_label.dir={blocks}",
              *OVERRIDES]
    run_train("-c", config, "--output", str(tmp_path / "straight"), *common)
    out = str(tmp_path / "killed")
    code = kill_run_at("step-00000012.pth", out, "-c", config, "--output", out, *common)  # inside epoch 1
    assert code == -signal.SIGKILL
    run_train("-c", config, "--output", out, "--resume", "auto", *common)
    assert_same_run(str(tmp_path / "straight" / "last.pth"), os.path.join(out, "last.pth"))
    # The label maps reach the gradients: the same run on image labels alone ends elsewhere.
    plain = str(tmp_path / "image-labels")
    run_train("-c", config, "--output", plain, *[a for a in common if not a.startswith("token_label.dir")])
    assert not torch.equal(load(os.path.join(plain, "last.pth"))["model"]["aux_head.weight"],
                           load(os.path.join(out, "last.pth"))["model"]["aux_head.weight"])


def test_missing_map_stops_train_py_in_one_line(labelled, tmp_path):
    data_dir, label_dir = labelled
    broken = str(tmp_path / "labels")
    os.makedirs(broken)
    for root, _, files in os.walk(label_dir):
        for name in files:
            dest = os.path.join(broken, os.path.relpath(os.path.join(root, name), label_dir))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(os.path.join(root, name), "rb") as src, open(dest, "wb") as f:
                f.write(src.read())
    classes = sorted(os.listdir(os.path.join(data_dir, "train")))
    image = sorted(os.listdir(os.path.join(data_dir, "train", classes[1])))[0]
    os.remove(label_path(broken, f"{classes[1]}/{image}"))
    proc = run_train("-c", write_config(str(tmp_path), TOKEN_LABEL_CONFIG), "--data-dir", data_dir, "--output",
                     str(tmp_path / "run"), f"token_label.dir={broken}", *OVERRIDES, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and os.path.join(data_dir, "train", classes[1], image) in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_block_stops_train_py_in_one_line(labelled, blocks, tmp_path):
    data_dir, _ = labelled
    broken = str(tmp_path / "labels")
    shutil.copytree(blocks, broken)
    os.remove(block_path(broken, 2))
    proc = run_train("-c", write_config(str(tmp_path), TOKEN_LABEL_CONFIG), "--data-dir", data_dir, "--output",
                     str(tmp_path / "run"), f"token_label.dir={broken}", *OVERRIDES, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and block_path(broken, 2) in lines[0] and "missing" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
