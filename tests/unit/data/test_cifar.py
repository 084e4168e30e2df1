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
from train_helpers import dump_pickle, make_cifar, make_data

CIFAR10, CIFAR100 = CIFAR_LAYOUTS


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
    dump_pickle(os.path.join(folder, "test_batch"), {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DatasetError, match="test_batch.*uint8 N x 3072"):
        CIFARDataset(folder, train=False)
    dump_pickle(os.path.join(folder, "test_batch"), {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 7]})
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
