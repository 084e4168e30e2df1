"""TensorBoard after a stop and a resume: every step once, with the resumed run's values."""
import glob
import os
import shutil

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from t2t.config import load_config
from t2t.engine import run as run_module
from train_helpers import make_data, write_config


def _scalars(folder, tag):
    events = EventAccumulator(os.path.join(folder, "tensorboard"))  # as TensorBoard reads the folder
    events.Reload()
    return [(e.step, e.value, e.wall_time) for e in events.Scalars(tag)]


def test_steps_logged_after_the_last_checkpoint_appear_once(tmp_path):
    """Steps 4 and 5 are logged by a process whose newest checkpoint is step 3 when it dies (a SIGKILL
    between two checkpoints); the resumed process logs them again, and TensorBoard shows each step once."""
    data = make_data(str(tmp_path / "data"))
    config = write_config(str(tmp_path))
    common = ["train.epochs=1", "sched.cooldown_epochs=1", "train.log_interval=1", "checkpoint.every_steps=3",
              "log.tensorboard=true"]
    out = str(tmp_path / "run")
    step3 = os.path.join(out, "step-00000003.pth")
    run_module.run(load_config(config, common + ["train.max_steps=3"]), data_dir=data, output=out)
    shutil.copy(step3, tmp_path / "step3.pth")
    run_module.run(load_config(config, common + ["train.max_steps=5"]), data_dir=data, output=out, resume="auto")
    for path in glob.glob(os.path.join(out, "*.pth")):  # the step-5 process dies before its checkpoint
        os.remove(path)
    shutil.copy(tmp_path / "step3.pth", step3)
    first = _scalars(out, "train/loss")
    assert [s for s, _, _ in first] == [1, 2, 3, 4, 5]
    killed_at = max(t for _, _, t in first)

    result = run_module.run(load_config(config, common), data_dir=data, output=out, resume="auto")
    steps = _scalars(out, "train/loss")
    assert result.state.global_step == 18
    assert [s for s, _, _ in steps] == list(range(1, 19))  # each step once
    assert all(t > killed_at for s, _, t in steps if s > 3)  # steps 4 and 5 are the resumed run's
    assert all(t <= killed_at for s, _, t in steps if s <= 3)
    assert [s for s, _, _ in _scalars(out, "epoch/train_loss")] == [0, 1]
