"""train.py with wandb (offline) and MLflow (file store): SIGKILL after a checkpoint, resume, one run, no step twice."""
import os
import re
import signal
import subprocess

import pytest
import torch

from train_helpers import ROOT, make_data, run_train, train_cmd, wandb_offline_runs, write_config

KILL_HOOK = os.path.join(ROOT, "tests", "kill_hook")  # its sitecustomize.py kills train.py at a set step
KILL_AT = 5  # the step whose scalars trigger the kill: after the step-3 checkpoint, before the step-6 one


def _kill_at_step(log: str, *args: str) -> None:
    """Run train.py until it kills itself as it reports step KILL_AT (tests/kill_hook/sitecustomize.py).

    Its output goes to the file `log`, not a pipe: wandb's service inherits it and outlives the kill."""
    path = os.pathsep.join(p for p in (KILL_HOOK, ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "T2T_TEST_KILL_AT_STEP": str(KILL_AT)}
    with open(log, "w") as f:
        code = subprocess.run(train_cmd(*args), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              timeout=300).returncode
    assert code == -signal.SIGKILL, f"train.py was not killed at step {KILL_AT} ({code}):\n{open(log).read()[-3000:]}"


@pytest.mark.slow
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
            "sched.warmup_epochs=0", "sched.cooldown_epochs=0", "train.log_interval=1", "checkpoint.every_steps=3",
            "checkpoint.keep_best=2", "log.wandb=true", "log.wandb_mode=offline", "log.mlflow=true",
            f"log.mlflow_tracking_uri={uri}", "log.project=demo", "log.run_name=tiny", "log.tags=[cpu,test]")
    _kill_at_step(str(tmp_path / "killed.log"), *args)
    client = MlflowClient(tracking_uri=uri)
    (killed_mlflow,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    # MLflow holds a step back until a checkpoint covers it: the killed process sent steps 1-3 only
    assert [m.step for m in client.get_metric_history(killed_mlflow.info.run_id, "train/loss")] == [1, 2, 3]

    proc = run_train(*args[:6], "--resume", "auto", *args[6:])
    at = int(re.search(r"Resuming from \S+step-(\d+)\.pth", proc.stdout + proc.stderr).group(1))
    assert at == 3
    trackers = torch.load(os.path.join(out, "last.pth"), weights_only=True)["trackers"]
    assert trackers["mlflow"] == killed_mlflow.info.run_id

    killed, resumed = wandb_offline_runs(out)
    assert killed["id"] == resumed["id"] == trackers["wandb"]
    assert sorted(killed["steps"]) == [1, 2, 3, 4]  # the killed process logged a step after its checkpoint
    # wandb's rewind: the resumed run branches off at the checkpoint's step and logs from the next one
    assert resumed["branch_point"] == (trackers["wandb"], at) and min(resumed["steps"]) == at + 1
    history = {s: v for s, v in killed["steps"].items() if s <= at} | resumed["steps"]
    assert sorted(s for s, v in history.items() if "train/loss" in v) == list(range(1, 10))
    assert "epoch/val_top1" in history[9] and history[9]["epoch/epoch"] == 0

    run = client.get_run(trackers["mlflow"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny" and {"cpu", "test"} <= set(run.data.tags)
    assert run.data.params["model.name"] == "t2t_vit_7" and run.data.tags["t2t.resumed_at_step"] == str(at)
    assert [r.info.run_id for r in client.search_runs([run.info.experiment_id])] == [trackers["mlflow"]]
    for key in ("train/loss", "train/lr", "train/grad_norm", "train/images_per_sec", "train/data_wait"):
        metrics = client.get_metric_history(trackers["mlflow"], key)
        assert [m.step for m in metrics] == list(range(1, 10)), key
        if key in ("train/loss", "train/lr", "train/grad_norm"):  # not timings: the same value in both trackers
            assert [m.value for m in metrics] == [history[s][key] for s in range(1, 10)], key
    assert [m.step for m in client.get_metric_history(trackers["mlflow"], "epoch/val_top1")] == [9]
    # checkpoint.keep_best: the evaluated epoch, named by its metric, is the epoch's checkpoint
    top1 = client.get_metric_history(trackers["mlflow"], "epoch/ema_val_top1")[0].value
    (best,) = [n for n in os.listdir(out) if n.startswith("best-epoch-")]
    assert best == f"best-epoch-0001-ema_val_top1-{top1:.3f}.pth"  # N as in epoch-N.pth: epochs completed
    assert os.path.samefile(os.path.join(out, best), os.path.join(out, "last.pth"))
