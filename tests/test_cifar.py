"""CIFAR folders read in place: detection, splits and names, clear errors, exact resume."""
import os
import pickle

import numpy as np
import pytest
import torch

from t2t.config import ConfigError, DataConfig
from t2t.data.cifar import CIFAR_LAYOUTS, CIFARDataset, find_cifar_dir
from t2t.data.dataset import DatasetError
from t2t.data.setup import build_train_tf, resolve_format
from train_helpers import assert_same_run, load, make_data, run_train, write_config

CIFAR10, CIFAR100 = CIFAR_LAYOUTS


def _dump(path: str, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar(root: str, layout=CIFAR10, *, classes: int = 3, per_file: int = 6, seed: int = 0) -> str:
    """A small CIFAR folder in the official layout: class-coloured 32 x 32 images with noise."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, layout.folder)
    os.makedirs(folder, exist_ok=True)
    names = [f"class_{i}".encode() for i in range(classes)]
    _dump(os.path.join(folder, layout.meta_file), {layout.names_key: names, b"num_vis": 3072})
    for name in layout.train_files + layout.test_files:
        labels = [int(i % classes) for i in range(per_file)]
        base = np.array([[40 + 80 * t, 200 - 60 * t, 90] for t in labels], dtype=np.int16)  # (N, 3)
        planes = np.repeat(base, 1024, axis=1) + rng.integers(-30, 30, (per_file, 3072))
        batch = {b"batch_label": name.encode(), layout.labels_key: labels,
                 b"data": planes.clip(0, 255).astype(np.uint8), b"filenames": [b"x.png"] * per_file}
        if layout is CIFAR100:
            batch[b"coarse_labels"] = [0] * per_file
        _dump(os.path.join(folder, name), batch)
    return folder


CIFAR_CONFIG = """\
model: {name: t2t_vit_7, img_size: 32, drop_path_rate: 0.1}
data: {workers: 0, train_transform: cifar, auto_augment: null, interpolation: bilinear, reprob: 0.25,
       mean: [0.4914, 0.4822, 0.4465], std: [0.2023, 0.1994, 0.2010]}
mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0}
train: {epochs: 2, batch_size: 4, log_interval: 2, device: cpu}
optim: {name: sgd, lr: 0.05, lr_base_batch_size: 4, weight_decay: 5.0e-4, backbone_lr_scale: 0.01}
sched: {warmup_epochs: 0, cooldown_epochs: 1, min_lr: 2.0e-4}
eval: {batch_size: 8, crop_pct: 1.0, interpolation: bilinear}
ema: {decay: 0.9}
log: {tensorboard: false}
"""


@pytest.mark.parametrize("layout", CIFAR_LAYOUTS, ids=["cifar10", "cifar100"])
def test_reads_both_layouts_in_place(tmp_path, layout):
    folder = make_cifar(str(tmp_path), layout, per_file=5)
    files = len(layout.train_files)
    train, test = CIFARDataset(folder, train=True), CIFARDataset(folder, train=False)
    assert len(train) == 5 * files and len(test) == 5
    assert train.classes == ["class_0", "class_1", "class_2"]
    image, label = train[4]
    assert image.size == (32, 32) and image.mode == "RGB" and label == 1
    # Plane layout: the first 1024 values are the red channel, row by row.
    with open(os.path.join(folder, layout.train_files[0]), "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][4]
    assert np.array_equal(np.asarray(image)[0, :, 0], raw[:32]) and np.array_equal(np.asarray(image)[1, :, 2],
                                                                                  raw[2048 + 32:2048 + 64])


def test_format_detection(tmp_path):
    cifar = make_cifar(str(tmp_path / "c"))
    folders = make_data(str(tmp_path / "f"))
    assert resolve_format(cifar, "auto") == "cifar"
    assert resolve_format(str(tmp_path / "c"), "auto") == "cifar"  # the torchvision root holding the folder
    assert find_cifar_dir(str(tmp_path / "c")) == (cifar, CIFAR10)
    assert resolve_format(folders, "auto") == "imagefolder"
    assert resolve_format(cifar, "imagefolder") == "imagefolder"  # detection off when asked


def test_missing_and_damaged_files_name_the_file(tmp_path):
    folder = make_cifar(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_3"))
    with pytest.raises(DatasetError, match="missing CIFAR file .*data_batch_3"):
        CIFARDataset(folder, train=True)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        f.write(b"\x80\x02}q\x00(U")  # truncated pickle
    with pytest.raises(DatasetError, match="cannot read CIFAR file .*test_batch"):
        CIFARDataset(folder, train=False)
    _dump(os.path.join(folder, "test_batch"), {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match="test_batch.*uint8 N x 3072"):
        CIFARDataset(folder, train=False)
    _dump(os.path.join(folder, "test_batch"), {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]})
    with pytest.raises(DatasetError, match="label 7 outside the 3 classes"):
        CIFARDataset(folder, train=False)


def test_pickled_code_is_refused(tmp_path):
    folder = make_cifar(str(tmp_path))
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": os.system}, f, protocol=2)
    with pytest.raises(DatasetError, match="test_batch.*posix.system is not part of a CIFAR batch file"):
        CIFARDataset(folder, train=False)


def test_augmentation_depends_only_on_seed_epoch_index(tmp_path):
    folder = make_cifar(str(tmp_path))
    cfg = DataConfig(train_transform="cifar", auto_augment=None, interpolation="bilinear", reprob=0.5)
    ds = CIFARDataset(folder, train=True, transform=build_train_tf(cfg, 64), seed=3)
    ds.set_epoch(2)
    first = [ds[i][0] for i in (5, 1, 7)]
    torch.manual_seed(123)  # global RNG state must not matter
    again = [ds[i][0] for i in (7, 5, 1)]
    assert first[0].shape == (3, 64, 64)
    for a, b in zip(first, (again[1], again[2], again[0])):
        assert torch.equal(a, b)
    ds.set_epoch(3)
    assert not torch.equal(ds[5][0], first[0])


def test_cifar_transform_settings_are_checked():
    with pytest.raises(ConfigError, match="data.auto_augment"):
        build_train_tf(DataConfig(train_transform="cifar"), 32)
    with pytest.raises(ConfigError, match="interpolation='random'"):
        build_train_tf(DataConfig(train_transform="cifar", auto_augment=None), 32)


def test_bad_cifar_folder_is_one_line_from_train_py(tmp_path):
    folder = make_cifar(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_2"))
    proc = run_train("-c", write_config(str(tmp_path), CIFAR_CONFIG), "--data-dir", folder,
                     "--output", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data_batch_2" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_inside_an_epoch_is_exact_on_cifar_files(tmp_path):
    folder = make_cifar(str(tmp_path), per_file=8)  # 40 training images: 10 steps of 4 per epoch
    config = write_config(str(tmp_path), CIFAR_CONFIG)
    common = ["--data-dir", folder, "data.workers=2"]
    run_train("-c", config, "--output", str(tmp_path / "straight"), *common)
    run_train("-c", config, "--output", str(tmp_path / "resumed"), *common, "train.max_steps=13")
    assert load(str(tmp_path / "resumed" / "step-00000013.pth"))["train_state"]["step_in_epoch"] == 3
    run_train("-c", config, "--output", str(tmp_path / "resumed"), "--resume", "auto", *common)
    assert_same_run(str(tmp_path / "straight" / "last.pth"), str(tmp_path / "resumed" / "last.pth"))
    ckpt = load(str(tmp_path / "straight" / "last.pth"))
    assert ckpt["run"]["classes"] == ["class_0", "class_1", "class_2"] and ckpt["train_state"]["global_step"] == 30


def test_validate_py_reads_the_cifar_test_split(tmp_path, capsys):
    import json
    import sys
    from train_helpers import ROOT
    from test_predict import save_run_checkpoint
    sys.path.insert(0, ROOT)
    import validate
    folder = make_cifar(str(tmp_path), per_file=5)
    ckpt = str(tmp_path / "best.pth")
    save_run_checkpoint(ckpt, classes=["class_0", "class_1", "class_2"])
    code = validate.main(["--data-dir", folder, "--checkpoint", ckpt, "-m", "t2t_vit_7", "--img-size", "32",
                          "--crop-pct", "1.0", "--workers", "0", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    results = json.loads(out.out.strip().splitlines()[-1])
    assert results["count"] == 5 and results["data_dir"] == folder
