"""train.py with wandb (offline) and MLflow (file store): SIGKILL after a checkpoint, resume, one run, no step twice."""
import os
import re
import signal
import subprocess
import time

import pytest
import torch

from train_helpers import ROOT, make_data, run_train, train_cmd, wandb_offline_runs, write_config


def _kill_past_a_checkpoint(out: str, *args: str) -> None:
    """Start train.py; SIGKILL it once its wandb run file holds a step after its newest checkpoint."""
    proc = subprocess.Popen(train_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"train.py ended early ({proc.returncode}): {proc.stderr.read()}")
            assert time.time() < deadline, "timed out waiting for steps logged after a checkpoint"
            saved = [int(n[5:13]) for n in os.listdir(out) if n.startswith("step-")] if os.path.isdir(out) else []
            runs = wandb_offline_runs(out, timeout=0) if saved else []
            if runs and runs[0]["steps"] and max(runs[0]["steps"]) > max(saved):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.skip(reason="timing-dependent: on a quiet CPU the 9-step run ends before wandb's offline file shows a "
                         "step past a checkpoint, and a kill timed by train.log loses the run record; needs a "
                         "kill point that does not depend on wandb's background writer")
def test_wandb_and_mlflow_keep_one_run_without_repeated_steps_across_a_kill(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path}/mlruns"
    data = make_data(str(tmp_path / "data"))  # 36 images, batch 4: 9 steps
    out = str(tmp_path / "run")
    args = ("-c", write_config(str(tmp_path)), "--data-dir", data, "--output", out, "train.epochs=1",
            "sched.warmup_epochs=0", "sched.cooldown_epochs=0", "train.log_interval=1", "checkpoint.every_steps=3", "checkpoint.keep_best=2",
            "log.wandb=true", "log.wandb_mode=offline", "log.mlflow=true", f"log.mlflow_tracking_uri={uri}",
            "log.project=demo", "log.run_name=tiny", "log.tags=[cpu,test]")
    _kill_past_a_checkpoint(out, *args)
    proc = run_train(*args[:6], "--resume", "auto", *args[6:])
    at = int(re.search(r"Resuming from \S+step-(\d+)\.pth", proc.stdout).group(1))
    trackers = torch.load(os.path.join(out, "last.pth"), weights_only=True)["trackers"]

    killed, resumed = wandb_offline_runs(out)
    assert killed["id"] == resumed["id"] == trackers["wandb"]
    assert max(killed["steps"]) > at  # the killed process had logged steps after the checkpoint it resumed from
    assert resumed["branch_point"] == (trackers["wandb"], at) and min(resumed["steps"]) == at + 1
    history = {s: v for s, v in killed["steps"].items() if s <= at} | resumed["steps"]  # wandb's rewind
    assert sorted(s for s, v in history.items() if "train/loss" in v) == list(range(1, 10))
    assert "epoch/val_top1" in history[9] and history[9]["epoch/epoch"] == 0

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(trackers["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny" and {"cpu", "test"} <= set(run.data.tags)
    assert run.data.params["model.name"] == "t2t_vit_7" and run.data.tags["t2t.resumed_at_step"] == str(at)
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [trackers["mlflow"]]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "train/data_wait"):
        assert [m.step for m in client.get_metric_history(trackers["mlflow"], key)] == list(range(1, 10)), key
    assert [m.step for m in client.get_metric_history(trackers["mlflow"], "epoch/val_top1")] == [9]
    # checkpoint.keep_best: the evaluated epoch, named by its metric, is the epoch's checkpoint
    top1 = client.get_metric_history(trackers["mlflow"], "epoch/ema_val_top1")[0].value
    (best,) = [n for n in os.listdir(out) if n.startswith("best-epoch-")]
    assert best == f"best-epoch-0001-ema_val_top1-{top1:.3f}.pth"  # N as in epoch-N.pth: epochs completed
    assert os.path.samefile(os.path.join(out, best), os.path.join(out, "last.pth"))
