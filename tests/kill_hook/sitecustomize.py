"""A deterministic kill point for train.py in tests (tests/integration/test_trackers_resume.py).

Loaded by Python at start-up when this folder is on PYTHONPATH; it does nothing unless
T2T_TEST_KILL_AT_STEP is set and the process runs train.py (wandb's service and other child processes
inherit the environment and are left alone). When train.py reports the scalars of step N:

1. it first waits until a checkpoint is on disk and the trackers were told (the background writer's
   call to the run logger returned), so the resume point is that checkpoint;
2. it passes step N on, which makes wandb commit step N - 1 (a row logged with an explicit step is
   committed when a later step arrives);
3. it waits until wandb's offline run file holds step N - 1, then SIGKILLs its own process only, so
   wandb's service (same session) survives to close the run record.
"""
import os
import sys

if os.environ.get("T2T_TEST_KILL_AT_STEP") and os.path.basename(sys.argv[0]) == "train.py":
    import signal
    import time

    from t2t.engine.metrics import RunLogger

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for train_helpers
    from train_helpers import wandb_offline_runs

    _KILL_AT = int(os.environ["T2T_TEST_KILL_AT_STEP"])
    _scalars, _checkpointed = RunLogger.scalars, RunLogger.checkpointed
    _told: list[int] = []  # the steps of the checkpoints the trackers were told of

    def _wait_for(what, ready, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while not ready():
            if time.time() > deadline:
                raise RuntimeError(f"kill hook: timed out waiting for {what}")
            time.sleep(0.05)

    def _logged(folder: str, step: int) -> bool:
        try:
            runs = wandb_offline_runs(folder, timeout=0)
        except (AssertionError, OSError):  # the file is being created: no header yet
            return False
        return bool(runs) and step in runs[-1]["steps"]

    def checkpointed(self, step):
        _checkpointed(self, step)
        _told.append(step)

    def scalars(self, values, step):
        if step != _KILL_AT:
            return _scalars(self, values, step)
        _wait_for("a checkpoint on disk", lambda: bool(_told))
        _scalars(self, values, step)
        _wait_for(f"step {step - 1} in wandb's run file", lambda: _logged(self.folder, step - 1))
        os.kill(os.getpid(), signal.SIGKILL)

    RunLogger.scalars, RunLogger.checkpointed = scalars, checkpointed
