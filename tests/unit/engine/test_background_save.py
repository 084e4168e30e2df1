"""Checkpoint writes in a background thread: a snapshot, one write at a time, errors raised, crash-safe."""
import os
import time

import pytest
import torch

from t2t.engine.background_save import BackgroundCheckpointWriter
from t2t.engine.checkpoint import CheckpointSaveError, CheckpointWriter, find_resume_checkpoint
from train_helpers import fake_checkpoint


def _state(step: int, weight: torch.Tensor) -> dict:
    """A training checkpoint (the current format) at `step` whose model and optimizer hold live tensors."""
    state = fake_checkpoint(step, 0)
    state["model"], state["optimizer"] = {"w": weight}, {"state": {0: {"m": weight * 2}}}
    return state


class SlowWriter(CheckpointWriter):
    """Records when each write starts and ends; each write takes `seconds`."""

    def __init__(self, folder, seconds=0.3, fail=False):
        super().__init__(folder)
        self.seconds, self.fail, self.spans = seconds, fail, []

    def save(self, state, *, epoch, step, end_of_epoch, is_best, score=None):
        start = time.monotonic()
        time.sleep(self.seconds)
        if self.fail:
            raise CheckpointSaveError(f"could not save checkpoint in {self.folder!r}: No space left on device")
        path = super().save(state, epoch=epoch, step=step, end_of_epoch=end_of_epoch, is_best=is_best, score=score)
        self.spans.append((start, time.monotonic()))
        return path


def test_the_write_takes_a_snapshot_and_does_not_hold_training(tmp_path):
    weight = torch.zeros(4)
    writer = BackgroundCheckpointWriter(SlowWriter(str(tmp_path), seconds=0.5))
    held = writer.save(_state(3, weight), epoch=0, step=3, end_of_epoch=False, is_best=False)
    assert held < 0.25 and writer.busy  # training goes on while the file is written
    weight.add_(1.0)  # the next steps change the live tensors
    writer.close()
    saved = torch.load(tmp_path / "step-00000003.pth", weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.zeros(4))  # the state at the save point
    assert torch.equal(saved["optimizer"]["state"][0]["m"], torch.zeros(4))


def test_two_saves_in_a_row_write_one_after_the_other(tmp_path):
    inner = SlowWriter(str(tmp_path), seconds=0.3)
    writer = BackgroundCheckpointWriter(inner)
    writer.save(_state(1, torch.ones(2)), epoch=0, step=1, end_of_epoch=False, is_best=False)
    held = writer.save(_state(2, torch.ones(2)), epoch=0, step=2, end_of_epoch=False, is_best=False)
    assert held >= 0.15  # the second save waited for the first write
    writer.close()
    (a_start, a_end), (b_start, b_end) = inner.spans
    assert a_end <= b_start
    assert find_resume_checkpoint(str(tmp_path))[1].global_step == 2


def test_an_error_of_the_writer_thread_is_raised_at_the_next_save_and_at_close(tmp_path):
    writer = BackgroundCheckpointWriter(SlowWriter(str(tmp_path), seconds=0.0, fail=True))
    writer.save(_state(1, torch.ones(2)), epoch=0, step=1, end_of_epoch=False, is_best=False)
    with pytest.raises(CheckpointSaveError, match="No space left"):
        writer.save(_state(2, torch.ones(2)), epoch=0, step=2, end_of_epoch=False, is_best=False)  # raised before a new write
    writer.close()  # reported once, nothing pending
    writer.save(_state(3, torch.ones(2)), epoch=0, step=3, end_of_epoch=False, is_best=False)
    with pytest.raises(CheckpointSaveError):  # a failed last write is raised at the exit
        writer.close()
    assert not os.listdir(tmp_path)


def test_on_written_hears_each_step_once_its_file_is_on_disk(tmp_path):
    heard = []

    def on_written(step):
        heard.append((step, os.path.exists(tmp_path / f"step-{step:08d}.pth")))

    writer = BackgroundCheckpointWriter(SlowWriter(str(tmp_path), seconds=0.2), on_written=on_written)
    writer.save(_state(3, torch.zeros(4)), epoch=0, step=3, end_of_epoch=False, is_best=False)
    assert heard == []  # still writing
    writer.close()
    assert heard == [(3, True)]
