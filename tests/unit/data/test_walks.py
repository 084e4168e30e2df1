"""Every folder walk (training listing, predict.py's and visualize.py's inputs) skips special files and
visits each real folder once, however many links lead to it."""
from __future__ import annotations

import os
import socket

import pytest
from PIL import Image

from t2t.data.dataset import list_images
from t2t.data.dataset import ImageFolderDataset
from t2t.walk import walk_files


def _image(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


@pytest.fixture
def tricky(tmp_path):
    """root/a/{0.jpg, sub/1.jpg, fifo.jpg (FIFO), sock.jpg (socket), loop -> a (link to an ancestor),
    again -> sub (a second link to one folder)}, root/b/2.jpg."""
    root = tmp_path / "root"
    _image(str(root / "a" / "0.jpg"))
    _image(str(root / "a" / "sub" / "1.jpg"))
    _image(str(root / "b" / "2.jpg"))
    os.mkfifo(root / "a" / "fifo.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "a" / "sock.jpg"))
    os.symlink(root / "a", root / "a" / "loop")
    os.symlink(root / "a" / "sub", root / "a" / "again")
    yield str(root)
    server.close()


def test_walk_files_skips_special_files_and_visits_each_folder_once(tricky):
    found = walk_files(os.path.join(tricky, "a"))
    folders = [os.path.relpath(folder, tricky) for folder, _ in found]
    assert len(folders) == 2 and folders[0] == "a"  # a, and sub under one of its two names
    assert os.path.realpath(os.path.join(tricky, folders[1])) == os.path.realpath(os.path.join(tricky, "a", "sub"))
    assert found[0][1] == ["0.jpg"] and found[1][1] == ["1.jpg"]


def test_training_listing_skips_fifos_and_symlink_loops(tricky):
    ds = ImageFolderDataset(tricky)
    names = sorted(os.path.basename(p) for p, _ in ds.samples)
    assert names == ["0.jpg", "1.jpg", "2.jpg"]  # the FIFO would block a reader; the loop would never end
    assert ds.targets.count(0) == 2


def test_predict_and_visualize_inputs_skip_fifos_and_symlink_loops(tricky):
    # predict.py and visualize.py take --images through t2t.data.dataset.list_images
    from t2t import predict
    import t2t.visualize

    assert predict.list_images is list_images and t2t.visualize.list_images is list_images
    paths = list_images([tricky])
    assert sorted(os.path.basename(p) for p in paths) == ["0.jpg", "1.jpg", "2.jpg"]
