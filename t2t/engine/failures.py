"""Deterministic failures recorded in the run folder, so that torchrun's restarts do not replay them.

A NaN stop (exit 3), a usage error (exit 2) or an unreadable image without data.skip_bad_images
fails again on every restart, after replaying the steps since the last checkpoint. Before exiting,
a worker under torchrun writes FAILURE_FILE in the run folder: the message, the exit status and
torchrun's run id. A worker of a later attempt of the same torchrun job (TORCHELASTIC_RESTART_COUNT
> 0, same TORCHELASTIC_RUN_ID) that finds it exits at once with the same message and status: each
remaining restart costs a process start, not the replayed steps (torchrun still counts them; it
restarts on any non-zero exit).

A run started by the user (a new torchrun, a requeued Slurm job, a plain `python train.py`, with or
without --resume) is a deliberate retry: it logs the recorded failure and removes the file, then runs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional

from ..outputs import write_text
from .distributed import env_int

_logger = logging.getLogger(__name__)

FAILURE_FILE = "failure.json"
_KIND = "t2t deterministic failure"


@dataclass(frozen=True)
class RecordedFailure:
    """A failure written by an earlier attempt: what it said and the exit status it gave."""

    message: str
    status: int
    run_id: str
    attempt: int


def _torchrun_run_id() -> Optional[str]:
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def record_failure(folder: Optional[str], message: str, status: int) -> Optional[str]:
    """Write the failure into `folder` under torchrun (where a restart would replay it); returns the path written.

    Nothing is written outside torchrun, when `folder` is not an existing folder, or over a file of that
    name that this module did not write.
    """
    run_id = _torchrun_run_id()
    if run_id is None or not folder or not os.path.isdir(folder):
        return None
    path = os.path.join(folder, FAILURE_FILE)
    if os.path.lexists(path) and _read(path) is None:
        _logger.warning("Not recording the failure: %s exists and was not written by t2t", path)
        return None
    record = {"kind": _KIND, "message": message, "status": int(status), "run_id": run_id,
              "attempt": env_int("TORCHELASTIC_RESTART_COUNT", 0), "rank": env_int("RANK", 0)}
    try:
        write_text(path, json.dumps(record, indent=1) + "\n")
    except OSError as e:  # the failure itself is what matters; the record is a convenience
        _logger.warning("Could not record the failure in %s: %s", path, e)
        return None
    return path


def _read(path: str) -> Optional[RecordedFailure]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or data.get("kind") != _KIND:
            return None
        return RecordedFailure(str(data["message"]), int(data["status"]), str(data["run_id"]), int(data["attempt"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def failure_of_this_job(folder: Optional[str]) -> Optional[RecordedFailure]:
    """The failure an earlier attempt of this torchrun job recorded in `folder`, if this worker is a restart."""
    run_id = _torchrun_run_id()
    if run_id is None or env_int("TORCHELASTIC_RESTART_COUNT", 0) == 0 or not folder:
        return None
    recorded = _read(os.path.join(folder, FAILURE_FILE))
    return recorded if recorded is not None and recorded.run_id == run_id else None


def clear_failure(folder: Optional[str]) -> Optional[RecordedFailure]:
    """At a start by the user: log and remove the failure recorded in `folder` (rank 0); returns it."""
    if not folder or env_int("RANK", 0) != 0:
        return None
    path = os.path.join(folder, FAILURE_FILE)
    recorded = _read(path)
    if recorded is None:
        return None
    _logger.warning("The previous run in %s stopped with exit status %d: %s; trying again", folder,
                    recorded.status, recorded.message)
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    return recorded
