"""Trackers: one run across a resume, no step twice, a failure logged once and the run going on."""
import logging

import pytest

from t2t.config import LogConfig, load_config
from t2t.engine import trackers as trackers_module
from t2t.engine.metrics import RunLogger
from t2t.engine.trackers import TrackerStart, Trackers
from train_helpers import wandb_offline_runs

START = dict(config={"model": {"name": "t2t_vit_7"}, "train": {"epochs": 1}}, plan={"global_batch_size": 4})


def _mlflow_history(uri, run_id, key):
    from mlflow import MlflowClient

    return [(m.step, m.value) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def test_mlflow_sends_steps_once_a_checkpoint_covers_them_and_a_resume_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path}/mlruns"
    log = LogConfig(tensorboard=False, mlflow=True, mlflow_tracking_uri=uri, project="demo", tags=("a",))
    first = RunLogger(str(tmp_path), tensorboard=False, trackers=Trackers(log, TrackerStart(str(tmp_path), **START)))
    run_id = first.trackers.run_ids["mlflow"]
    for step in range(1, 6):
        first.scalars({"train/loss": 10.0 + step}, step)
        if step == 3:
            first.checkpointed(3)  # what the checkpoint writer's thread calls once step 3 is on disk
            # sent at once: a kill before the next log must not lose steps the resume from step 3 skips
            assert _mlflow_history(uri, run_id, "train/loss") == [(1, 11.0), (2, 12.0), (3, 13.0)]
    assert _mlflow_history(uri, run_id, "train/loss") == [(1, 11.0), (2, 12.0), (3, 13.0)]
    # killed here: steps 4 and 5 were never sent; the resume from step 3 logs them again
    resumed = RunLogger(str(tmp_path), tensorboard=False, trackers=Trackers(
        log, TrackerStart(str(tmp_path), resumed_step=3, **START), run_ids={"mlflow": run_id}))
    assert resumed.trackers.run_ids == {"mlflow": run_id}
    for step in range(4, 8):
        resumed.scalars({"train/loss": 20.0 + step}, step)
    resumed.write_epochs([{"epoch": 0, "global_step": 7, "train_loss": 1.5}])
    resumed.close()
    assert _mlflow_history(uri, run_id, "train/loss") == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0), (5, 25.0),
                                                          (6, 26.0), (7, 27.0)]
    assert _mlflow_history(uri, run_id, "epoch/train_loss") == [(7, 1.5)]
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "t2t_vit_7"
    assert run.data.params["run_plan.global_batch_size"] == "4" and "a" in run.data.tags


@pytest.mark.slow  # two offline wandb runs (2.5 s)
def test_wandb_offline_resume_rewinds_the_same_run_to_the_checkpoint_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    log = LogConfig(tensorboard=False, wandb=True, wandb_mode="offline", project="demo")
    first = Trackers(log, TrackerStart(str(tmp_path), **START))
    run_id = first.run_ids["wandb"]
    for step in range(1, 6):
        first.log({"train/loss": 10.0 + step}, step)
    first.close()
    resumed = Trackers(log, TrackerStart(str(tmp_path), resumed_step=3, **START), run_ids={"wandb": run_id})
    for step in range(4, 8):
        resumed.log({"train/loss": 20.0 + step}, step)
    resumed.close()
    killed, second = wandb_offline_runs(str(tmp_path))
    assert killed["id"] == second["id"] == run_id
    assert sorted(killed["steps"]) == [1, 2, 3, 4, 5] and killed["branch_point"] is None
    assert second["branch_point"] == (run_id, 3) and sorted(second["steps"]) == [4, 5, 6, 7]
    # wandb keeps the history up to the branch point and the resumed run's after it: every step once
    history = {s: v for s, v in killed["steps"].items() if s <= 3} | second["steps"]
    assert [(s, history[s]["train/loss"]) for s in sorted(history)] == [
        (1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0), (5, 25.0), (6, 26.0), (7, 27.0)]


class _Flaky:
    name = "flaky"

    def __init__(self, log, start):
        self.run_id, self.calls = "r1", 0

    def log(self, values, step):
        self.calls += 1
        if step >= 2:
            raise ConnectionError("server went away")

    def checkpointed(self, step):
        pass

    def close(self, failed=False):
        pass


def _refuses(log, start):
    raise PermissionError("wandb: invalid API key\nsee the docs")


def test_a_tracker_that_fails_is_logged_once_and_switched_off(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(trackers_module.TRACKERS, "wandb", _Flaky)
    monkeypatch.setitem(trackers_module.TRACKERS, "mlflow", _refuses)
    log = LogConfig(wandb=True, mlflow=True)
    with caplog.at_level(logging.INFO, logger="t2t.train"):
        trackers = Trackers(log, TrackerStart(str(tmp_path), **START))
        for step in range(1, 6):
            trackers.log({"train/loss": 1.0}, step)
        trackers.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == ["log.mlflow: the tracker could not start (wandb: invalid API key see the docs); training "
                     "continues without it, with the local logs",
                     "log.wandb failed (server went away); it is off for the rest of this run, the local logs go on"]
    assert trackers.active == {}


def test_a_tracker_that_is_not_installed_is_a_config_error_before_the_run(monkeypatch):
    import importlib.util

    from t2t.config import ConfigError
    from t2t.engine.trackers import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config(overrides=["log.wandb=true"])  # a stored config with a tracker stays readable (validate.py)
    with pytest.raises(ConfigError, match=r"log.wandb=true, but the wandb package is not installed: pip install "
                                          r"'t2t\[wandb\]'"):
        check_installed(cfg.log)
    check_installed(load_config(overrides=["log.mlflow=true"]).log)
