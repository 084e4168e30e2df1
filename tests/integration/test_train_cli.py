"""train.py end to end: run folders, bad data, --print-config, exact resume after a stop or a kill, the demo config."""
import os
import signal
import subprocess
import time

import pytest

from t2t.engine.checkpoint import find_resume_checkpoint
from t2t.engine.run import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE
from train_helpers import (ROOT, assert_same_run, load, make_data, run_train, shared_folder, straight_run, train_cmd,
                           write_config)

# Loader workers and a checkpoint every 4 steps: the mid-epoch resume and every kill below compare against
# the one uninterrupted run of these settings (straight_run runs it once per session).
WORKERS_2 = ("data.workers=2", "checkpoint.every_steps=4")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return shared_folder(tmp_path_factory, "make_data()", make_data)


def test_existing_run_folder_is_refused_without_resume(data_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"precious")
    proc = run_train("-c", write_config(str(tmp_path)), "--data-dir", data_dir, "--output", str(out), check=False)
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr and "--resume auto" in proc.stderr
    assert (out / "last.pth").read_bytes() == b"precious"


def test_bad_data_dir_is_one_clear_line(tmp_path):
    proc = run_train("-c", write_config(str(tmp_path)), "--data-dir", str(tmp_path / "nowhere"),
                     "--output", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_print_config_shows_overrides(tmp_path):
    proc = run_train("-c", write_config(str(tmp_path)), "--print-config", "optim.lr=0.25")
    assert "lr: 0.25" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("stop_at,settings", [(9, ("data.workers=0",)), (13, WORKERS_2),
                                              (13, ("data.workers=2", "data.repeated_aug=true"))],
                         ids=["epoch-boundary", "mid-epoch-workers", "mid-epoch-repeated-aug"])
def test_resume_is_exact(data_dir, tmp_path_factory, tmp_path, stop_at, settings):
    config = write_config(str(tmp_path))
    common = ["--data-dir", data_dir, *settings]
    straight = straight_run(tmp_path_factory, data_dir, *settings)
    run_train("-c", config, "--output", str(tmp_path / "resumed"), *common, f"train.max_steps={stop_at}")
    assert load(str(tmp_path / "resumed" / "last.pth"))["train_state"]["global_step"] == min(stop_at, 9)
    run_train("-c", config, "--output", str(tmp_path / "resumed"), "--resume", "auto", *common)
    assert_same_run(straight, str(tmp_path / "resumed" / "last.pth"))


def _wait_for(path_test, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path_test():
            return
        if proc.poll() is not None:
            raise AssertionError(f"train.py ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.parametrize("sig,group", [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGTERM, True),
                                       (signal.SIGINT, True)],
                         ids=["sigkill", "sigterm", "sigterm-process-group", "ctrl-c-process-group"])
def test_killed_run_resumes_exactly(data_dir, tmp_path_factory, tmp_path, sig, group):
    """SIGTERM / SIGINT to the whole process group (as Slurm, `kill -- -PGID`, docker stop and Ctrl-C send
    them) reach the loader workers too: they ignore it, the main process saves and exits."""
    config = write_config(str(tmp_path))
    common = ["--data-dir", data_dir, *WORKERS_2]
    straight = straight_run(tmp_path_factory, data_dir, *WORKERS_2)
    out = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd("-c", config, "--output", str(out), *common),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: (out / "step-00000012.pth").exists(), proc)  # inside epoch 1
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        proc.kill()
    stderr = proc.stderr.read()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == (PREEMPTED_EXIT_CODE if sig == signal.SIGTERM else INTERRUPTED_EXIT_CODE), stderr
        assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
        ckpt, _ = find_resume_checkpoint(str(out))
        assert load(ckpt)["train_state"]["global_step"] >= 12
    run_train("-c", config, "--output", str(out), "--resume", "auto", *common)
    assert_same_run(straight, str(out / "last.pth"))


@pytest.mark.slow
def test_demo_config_runs(data_dir, tmp_path):  # the recipe by name, as the installed command finds it
    run_train("-c", "demo", "--data-dir", data_dir, "--output",
              str(tmp_path / "demo"), "train.epochs=1", "model.img_size=32", "data.workers=0")
    assert load(str(tmp_path / "demo" / "best.pth"))["train_state"]["history"][0]["epoch"] == 0
