"""Progressive resolution end to end: a run killed before its size change resumes bit-identically, and its
evaluation and checkpoints are those of model.img_size."""
import json
import os
import signal

import pytest

from zygote import run_script
from train_helpers import ROOT, assert_same_run, kill_run_at, load, make_data, run_train, write_config

pytestmark = pytest.mark.slow

# Epoch 0 at 32 px, epoch 1 at 48 px (= model.img_size); 36 images in batches of 4: 9 steps an epoch.
PROGRESSIVE = ["model.img_size=48", "train.img_sizes=[32,48]", "data.workers=2", "checkpoint.every_steps=4"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")))


def test_killed_across_the_size_change_resumes_exactly(data_dir, tmp_path):
    config = write_config(str(tmp_path))
    common = ["-c", config, "--data-dir", data_dir, *PROGRESSIVE]
    straight = str(tmp_path / "straight")
    run_train(*common, "--output", straight)
    log = open(os.path.join(straight, "train.log")).read()
    assert "Progressive resolution: 32 px from epoch 0, 48 px from epoch 1" in log
    out = str(tmp_path / "killed")
    # Killed at step 4 (epoch 0, 32 px); the resume crosses to 48 px and is killed again at step 12 (epoch 1).
    assert kill_run_at("step-00000004.pth", out, *common, "--output", out) == -signal.SIGKILL
    assert kill_run_at("step-00000012.pth", out, *common, "--output", out, "--resume", "auto") == -signal.SIGKILL
    run_train(*common, "--output", out, "--resume", "auto")
    assert_same_run(os.path.join(straight, "last.pth"), os.path.join(out, "last.pth"))

    # Checkpoints hold the model.img_size table; validate.py at model.img_size scores what the run's last epoch did.
    last = load(os.path.join(straight, "last.pth"))
    assert tuple(last["model"]["pos_embed"].shape[:2]) == (1, 1 + 3 * 3)
    results_file = tmp_path / "results.json"
    proc = run_script([os.path.join(ROOT, "validate.py"), "--device", "cpu", "--data-dir", data_dir, "--checkpoint",
                       os.path.join(straight, "last.pth"), "--workers", "0", "--results-file", results_file],
                      cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(results_file.read_text())
    row = last["train_state"]["history"][-1]
    assert results["img_size"] == 48
    assert (results["top1"], results["top5"]) == (row["ema_val_top1"], row["ema_val_top5"])


def test_the_size_reaches_the_gradients(data_dir, tmp_path):
    """The same run at 48 px throughout ends elsewhere: the low-resolution epoch trained at 32 px."""
    config = write_config(str(tmp_path))
    common = ["-c", config, "--data-dir", data_dir, "train.max_steps=9", *PROGRESSIVE]
    run_train(*common, "--output", str(tmp_path / "progressive"))
    run_train(*[a for a in common if not a.startswith("train.img_sizes")], "--output", str(tmp_path / "plain"))
    a, b = load(str(tmp_path / "progressive" / "last.pth")), load(str(tmp_path / "plain" / "last.pth"))
    assert not all(a["model"][k].equal(b["model"][k]) for k in a["model"])
