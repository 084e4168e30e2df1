"""Where a run lives and where it continues from: the output folder and the choice of checkpoint to resume.

Rank 0 decides; every rank then uses its answer (`agreed`), because ranks that each listed a folder
on a shared filesystem could see different files.
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Callable, Optional

from ..config import Config, ConfigError, config_from_dict
from ..errors import T2TError
from .checkpoint import find_resume_checkpoint, is_run_checkpoint, load_training_checkpoint, \
    remove_stale_temporaries
from .collectives import broadcast_object
from .distributed import DistInfo, env_int

_logger = logging.getLogger("t2t.train")


class RunError(T2TError, RuntimeError):
    """A run that cannot start as asked (existing folder, missing checkpoint...)."""


def _folder_holds_run(folder: str) -> bool:
    return os.path.isdir(folder) and any(
        name == "config.yaml" or is_run_checkpoint(name) for name in os.listdir(folder))


def _folder_has_checkpoints(folder: str) -> bool:
    return os.path.isdir(folder) and any(is_run_checkpoint(name) for name in os.listdir(folder))


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def resolve_output(cfg: Config, output: Optional[str], resume: Optional[str]) -> str:
    """The run folder: --output, the resumed checkpoint's folder, or a new runs/<model>-<time>."""
    if output is None and resume not in (None, "auto"):
        return os.path.dirname(os.path.abspath(resume))
    if output is None:
        if resume == "auto":
            raise RunError("--resume auto needs --output: the folder to continue in")
        max_restarts = env_int("TORCHELASTIC_MAX_RESTARTS", 0)
        if max_restarts > 0:
            raise RunError(
                f"torchrun may restart this run (--max-restarts={max_restarts}), and a restart must find the "
                "run again: give the run folder with --output")
        safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", cfg.model.name).lstrip(".")  # never a path of its own
        output = os.path.join("runs", f"{safe_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    return output


def choose_resume(output: str, resume: Optional[str], loaded: Optional[dict[str, Any]] = None) -> Optional[str]:
    """Rank 0's choice of the checkpoint to resume from (None: a new run), or RunError.

    Every rank then loads the file chosen here. A checkpoint read while choosing is kept in `loaded`
    (path -> contents), so rank 0 does not read a large file twice.
    """
    restarted = env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0
    if os.path.isdir(output):
        remove_stale_temporaries(output)
    if resume == "auto" or (restarted and resume is None):
        found = find_resume_checkpoint(output) if os.path.isdir(output) else None
        if found is not None:
            if loaded is not None:
                loaded[found[0]] = found[1]
            return found[0]
        if _folder_has_checkpoints(output):
            raise RunError(f"no checkpoint in {output!r} can be loaded (see the warnings above): not starting "
                           "over them; move them away to start a new run there")
        if _folder_holds_run(output):
            _logger.warning("%s holds a run that never saved a checkpoint: starting it from the beginning", output)
        else:
            _logger.info("No checkpoint in %s yet: starting a new run", output)
        return None
    if resume is not None:
        if not os.path.isfile(resume):
            raise RunError(f"--resume {resume!r}: no such checkpoint file")
        if not _same_folder(os.path.dirname(os.path.abspath(resume)), output) and _folder_holds_run(output):
            raise RunError(
                f"--output {output!r} already holds another run; resuming {resume!r} there would overwrite it. "
                "Choose an empty --output, or leave --output out to continue in the checkpoint's own folder")
        return resume
    if _folder_holds_run(output):
        raise RunError(
            f"output folder {output!r} already holds a run; continue it with --resume auto, "
            "or choose another --output")
    return None


def agreed(dist: DistInfo, fn: Callable[[], Any]) -> Any:
    """Rank 0 runs `fn`; every rank gets its result, or raises the RunError it raised."""
    outcome = None
    if dist.is_main:
        try:
            outcome = ("ok", fn())
        except (RunError, ConfigError) as e:
            outcome = ("error", str(e))
    outcome = broadcast_object(outcome)
    if outcome[0] == "error":
        raise RunError(outcome[1])
    return outcome[1]


def resume_config(path_or_folder: str) -> Config:
    """The config stored with a run (its newest checkpoint, or a checkpoint file), for --resume without -c."""
    if os.path.isdir(path_or_folder):
        found = find_resume_checkpoint(path_or_folder)
        if found is None:
            raise RunError(f"no checkpoint in {path_or_folder!r} to take the config from")
        return config_from_dict(found[1].config, origin=found[0])
    return config_from_dict(load_training_checkpoint(path_or_folder).config, origin=path_or_folder)
