"""Experiment trackers (Weights & Biases, MLflow) that follow a run across kills and resumes; rank 0 only.

Each tracker gets the same scalars as TensorBoard at the run's global step, and the epoch rows. Its
run id is stored in the checkpoint (`TrainingCheckpoint.trackers`), so a resume continues the same
tracker run, and what the killed process logged after that checkpoint never appears twice:

- wandb: the resumed process starts with `resume_from="<id>?_step=<checkpoint step>"`, wandb's
  rewind: the run's history after that step is dropped and the resumed run's values take its place.
- MLflow cannot delete logged values, so its metrics are held back until a checkpoint that covers
  their step is on disk (`checkpointed`, called by the checkpoint writer's thread as soon as the file
  is in place), and sent then; a kill loses only steps that the resumed process logs again. The run's
  MLflow curves lag by at most one checkpoint interval.

A tracker that cannot start (bad credentials, unreachable server) is one warning line at the start and
the run goes on without it; a failure once it runs is logged once and the tracker is switched off for
the rest of the run, while log.jsonl, summary.csv and TensorBoard carry on. A tracker that is not
installed is a config error before anything starts (`check_installed`, on every rank).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..cli import one_line
from ..config import ConfigError, LogConfig

_logger = logging.getLogger("t2t.train")

DEFAULT_PROJECT = "t2t"


@dataclass
class TrackerStart:
    """What a tracker needs at the start of a run (rank 0)."""

    folder: str  # the run folder
    config: dict[str, Any]  # the resolved config (Config.to_dict())
    plan: dict[str, Any]  # the run plan (RunPlan.to_dict())
    run_id: Optional[str] = None  # the tracker's run to continue (from the checkpoint), None for a new run
    resumed_step: Optional[int] = None  # the checkpoint's global step when resuming


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_installed(log: LogConfig) -> None:
    """ConfigError if a tracker that `log` turns on is not installed: one line before the run starts."""
    import importlib.util

    for name in TRACKERS:
        if getattr(log, name) and importlib.util.find_spec(name) is None:
            raise ConfigError(f"log.{name}=true, but the {name} package is not installed: pip install "
                              f"'t2t[{name}]' (or set log.{name}=false)")


class WandbTracker:
    """Weights & Biases: live scalars, the run rewound to the checkpoint's step on a resume."""

    name = "wandb"

    def __init__(self, log: LogConfig, start: TrackerStart) -> None:
        import wandb

        kwargs: dict[str, Any] = dict(
            project=log.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            entity=log.wandb_entity, name=log.run_name or os.environ.get("WANDB_NAME") or
            os.path.basename(os.path.abspath(start.folder)), tags=list(log.tags) or None, dir=start.folder,
            mode=log.wandb_mode, config={**start.config, "run_plan": start.plan})
        if start.run_id is not None:
            # Rewind: history after the checkpoint's step (logged by the killed process) is replaced.
            kwargs["resume_from"] = f"{start.run_id}?_step={start.resumed_step}"
        os.makedirs(start.folder, exist_ok=True)
        self.run = wandb.init(**kwargs)
        self.run_id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def checkpointed(self, step: int) -> None:
        pass  # logged live: a resume rewinds the run instead

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    """MLflow: the config and plan as params and artifacts; metrics sent once a checkpoint covers their step."""

    name = "mlflow"

    def __init__(self, log: LogConfig, start: TrackerStart) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=log.mlflow_tracking_uri)
        if start.run_id is not None:
            self.run_id = start.run_id
            self.client.update_run(self.run_id, status="RUNNING")  # also checks the run exists
            self.client.set_tag(self.run_id, "t2t.resumed_at_step", str(start.resumed_step))
        else:
            name = log.project or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=log.run_name or os.path.basename(
                os.path.abspath(start.folder)), tags={**{tag: "" for tag in log.tags}, "t2t.run_folder":
                                                      os.path.abspath(start.folder)})
            self.run_id = run.info.run_id
            self._log_params(start)
        self._pending: list[tuple[int, dict[str, float], int]] = []  # (step, values, time in ms)

    def _log_params(self, start: TrackerStart) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in _flat(start.config).items()]
        params += [Param(f"run_plan.{key}", str(value)[:6000]) for key, value in _flat(start.plan).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_dict(self.run_id, start.config, "config.json")
        self.client.log_dict(self.run_id, start.plan, "run_plan.json")

    def log(self, values: dict[str, float], step: int) -> None:
        self._pending.append((step, values, int(time.time() * 1000)))

    def checkpointed(self, step: int) -> None:
        """Send the metrics of steps up to `step`: a checkpoint at `step` is on disk, a resume starts after them."""
        from mlflow.entities import Metric

        due = [p for p in self._pending if p[0] <= step]
        if not due:
            return
        self._pending = [p for p in self._pending if p[0] > step]
        metrics = [Metric(key, float(value), ms, s) for s, values, ms in due for key, value in values.items()]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


TRACKERS: dict[str, Callable[[LogConfig, TrackerStart], Any]] = {"wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The trackers of a run behind one guard: a failure is logged once and switches that tracker off.

    The training thread logs and the checkpoint writer's thread reports checkpoints: one lock keeps their
    calls apart (a log waits only while a checkpoint's held-back metrics are being sent)."""

    def __init__(self, log: LogConfig, start: TrackerStart, run_ids: Optional[dict[str, str]] = None) -> None:
        self.active: dict[str, Any] = {}
        self._lock = threading.Lock()
        run_ids = run_ids or {}
        for name, build in TRACKERS.items():
            if not getattr(log, name):
                continue
            this = TrackerStart(folder=start.folder, config=start.config, plan=start.plan,
                                run_id=run_ids.get(name) if start.resumed_step is not None else None,
                                resumed_step=start.resumed_step)
            try:
                self.active[name] = build(log, this)
            except Exception as e:  # credentials, network, a server that refuses: one line, the run goes on
                _logger.warning("log.%s: the tracker could not start (%s); training continues without it, with "
                                "the local logs", name, one_line(e))
                continue
            what = f"continues run {this.run_id} from step {this.resumed_step}" if this.run_id else \
                f"run {self.active[name].run_id}"
            _logger.info("log.%s: %s", name, what)

    @property
    def run_ids(self) -> dict[str, str]:
        """Each running tracker's run id, for the checkpoint."""
        return {name: tracker.run_id for name, tracker in self.active.items()}

    def _each(self, call: Callable[[Any], None]) -> None:
        with self._lock:
            for name, tracker in list(self.active.items()):
                try:
                    call(tracker)
                except Exception as e:
                    _logger.warning("log.%s failed (%s); it is off for the rest of this run, the local logs go on",
                                    name, one_line(e))
                    del self.active[name]

    def log(self, values: dict[str, float], step: int) -> None:
        self._each(lambda t: t.log(values, step))

    def checkpointed(self, step: int) -> None:
        self._each(lambda t: t.checkpointed(step))

    def close(self, failed: bool = False) -> None:
        if not failed:  # the run ended with its last checkpoint written: everything is covered
            self._each(lambda t: t.checkpointed(2 ** 62))
        self._each(lambda t: t.close(failed))
        with self._lock:
            self.active.clear()
