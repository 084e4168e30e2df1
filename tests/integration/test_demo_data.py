"""scripts/make_demo_data.py: the demo folder's layout, and the same bytes from the same seed."""
from __future__ import annotations

import numpy as np
from PIL import Image

from t2t.data import ImageFolderDataset, check_same_classes, find_split_dirs

# ---------------------------------------------------------------------------------------------
# Evaluation transform


# ---------------------------------------------------------------------------------------------
# Folder layout and errors


# ---------------------------------------------------------------------------------------------
# Per-sample determinism


# ---------------------------------------------------------------------------------------------
# Samplers


# ---------------------------------------------------------------------------------------------
# Training transforms


# ---------------------------------------------------------------------------------------------
# Device-side normalisation and erasing


# ---------------------------------------------------------------------------------------------
# Mixup and main-process seeding


# ---------------------------------------------------------------------------------------------
# Demo data and benchmark


def test_demo_data_layout_and_determinism(tmp_path):
    from t2t.tools import demo_data as demo

    dirs = demo.make_demo_dataset(str(tmp_path / "a"), classes=3, train_per_class=4, val_per_class=2, size=32, seed=1)
    train, val = find_split_dirs(str(tmp_path / "a"))
    assert dirs == {"train": train, "val": val}
    train_ds, val_ds = ImageFolderDataset(train), ImageFolderDataset(val)
    check_same_classes(train_ds, val_ds)
    assert len(train_ds.classes) == 3 and len(train_ds) == 12 and len(val_ds) == 6
    for path, _ in list(train_ds.samples) + list(val_ds.samples):
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (32, 32)
            im.load()
    from train_helpers import load_script

    load_script("make_demo_data").main(["--out", str(tmp_path / "b"), "--classes", "3", "--train-per-class", "4",
               "--val-per-class", "2", "--size", "32", "--seed", "1"])
    for path, _ in train_ds.samples:
        twin = path.replace(str(tmp_path / "a"), str(tmp_path / "b"))
        assert open(path, "rb").read() == open(twin, "rb").read()
    # Classes differ visibly: the mean images of two classes are far apart.
    means = [np.mean([np.asarray(Image.open(p), dtype=np.float32) for p, t in train_ds.samples if t == c], 0) for c in range(3)]
    assert np.abs(means[0] - means[1]).mean() > 5


# ---------------------------------------------------------------------------------------------
# File lists: compact, listed by one rank, cached in the run folder


# ---------------------------------------------------------------------------------------------
# Vectorised random erasing
