"""The checkpoint folder's extra names (best.pth, epoch-N.pth, best-epoch-*.pth): a link, or a durable copy."""
import errno
import os

import pytest

from t2t.engine import checkpoint
from t2t.engine.checkpoint import CheckpointWriter
from t2t.outputs import WriteError
from train_helpers import save_fake


def _no_links(*args, **kwargs):
    raise OSError(errno.EPERM, "hard links not supported")


def test_best_is_a_hard_link_or_else_a_copy(tmp_path, monkeypatch):
    writer = CheckpointWriter(str(tmp_path))
    save_fake(writer, 3, 1, end_of_epoch=True, is_best=True)
    assert os.path.samefile(tmp_path / "best.pth", tmp_path / "last.pth")
    monkeypatch.setattr(os, "link", _no_links)  # a filesystem without hard links (some network or FUSE mounts)
    save_fake(writer, 6, 2, end_of_epoch=True, is_best=True)
    assert not os.path.samefile(tmp_path / "best.pth", tmp_path / "last.pth")
    assert (tmp_path / "best.pth").read_bytes() == (tmp_path / "last.pth").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]  # no temporary left


def test_a_copy_that_fails_keeps_the_previous_best(tmp_path, monkeypatch):
    writer = CheckpointWriter(str(tmp_path))
    save_fake(writer, 3, 1, end_of_epoch=True, is_best=True)
    before = (tmp_path / "best.pth").read_bytes()

    def full_disk(src, dst):
        open(dst, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "link", _no_links)
    monkeypatch.setattr(checkpoint.shutil, "copyfile", full_disk)
    with pytest.raises(WriteError, match="best.pth"):
        save_fake(writer, 6, 2, end_of_epoch=True, is_best=True)
    assert (tmp_path / "best.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.pth", "last.pth"]
