"""Checkpoints that cannot be lost: atomic writes, self-describing contents, resume from the newest valid file."""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import time
from typing import Any, Optional

import torch

from ..checkpoint_schema import TrainingCheckpoint, library_versions
from ..errors import EXIT_IO, CheckpointError, T2TError
from ..models.weights import describe_mismatch, read_checkpoint, strip_prefixes
from ..outputs import atomic_output

_logger = logging.getLogger(__name__)

LAST = "last.pth"
BEST = "best.pth"
_EPOCH_PATTERN = re.compile(r"epoch-(\d+)\.pth$")
_STEP_PATTERN = re.compile(r"step-(\d+)\.pth$")
# best-epoch-0012-ema_val_top1-81.532.pth: one of the K best end-of-epoch checkpoints (checkpoint.keep_best)
_BEST_PATTERN = re.compile(r"^best-epoch-(\d+)-([a-z0-9_]+)-(-?\d+(?:\.\d+)?)\.pth$")


def best_checkpoint_name(epoch: int, metric: str, value: float) -> str:
    """The name of a kept-best checkpoint: its epoch, the metric and the metric's value."""
    return f"best-epoch-{epoch:04d}-{metric}-{value:.3f}.pth"


def kept_best_checkpoints(folder: str, metric: str) -> list[tuple[float, int, str]]:
    """(value, epoch, path) of the kept-best checkpoints of `metric` in `folder`, best first (earlier epoch on ties)."""
    found = []
    for name in os.listdir(folder):
        m = _BEST_PATTERN.match(name)
        if m and m.group(2) == metric:
            found.append((float(m.group(3)), int(m.group(1)), os.path.join(folder, name)))
    return sorted(found, key=lambda f: (-f[0], f[1]))


def clean_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes."""
    return strip_prefixes(module.state_dict())


class CheckpointSaveError(T2TError, OSError):
    """A checkpoint could not be written (full disk, lost permission); the files already there are untouched."""

    exit_status = EXIT_IO
    hint = "; free space (or fix the cause) and continue with --resume auto --output FOLDER"


def atomic_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename onto `path`; CheckpointSaveError if it fails."""
    try:
        with atomic_output(path, suffix=".pth") as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        raise _save_error(path, os.path.dirname(os.path.abspath(path)), e) from e


def _save_error(path: str, folder: str, error: OSError) -> CheckpointSaveError:
    reason = error.strerror or str(error) or type(error).__name__
    previous = f"the previous {os.path.basename(path)} and the other checkpoints" if os.path.exists(path) else \
        "the checkpoints already there"
    out = CheckpointSaveError(f"could not save checkpoint {path!r}: {reason}; nothing was replaced: "
                              f"{previous} in {folder!r} are intact")
    out.errno = error.errno
    return out


def load_training_checkpoint(path: str) -> TrainingCheckpoint:
    """Load one of our training checkpoints (plain data only) on the CPU; CheckpointError says why one cannot be."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    return TrainingCheckpoint.from_dict(read_checkpoint(path), path=path)


def check_checkpoint_fits(ckpt: TrainingCheckpoint, model: torch.nn.Module, *, path: str, model_name: str) -> None:
    """CheckpointError naming what differs if the checkpoint's weights do not fit `model` (another model, class count, size)."""
    weights = ckpt.weights
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"checkpoint {path!r} is damaged: its 'model' entry is not a state dict of tensors")
    mismatch = describe_mismatch(weights, model.state_dict())
    if not mismatch:
        return
    recorded = ckpt.config.get("model", {}) if isinstance(ckpt.config, dict) else {}
    saved = (recorded.get("name", ckpt.arch), _num_classes(weights), recorded.get("img_size"))
    now = (model_name, _num_classes(model.state_dict()), getattr(model, "img_size", None))
    differs = [f"{what} {a!r} -> {b!r}" for what, a, b in zip(("model", "classes", "img_size"), saved, now)
               if a is not None and b is not None and a != b]
    raise CheckpointError(
        f"cannot resume from {path!r}: its weights do not fit the model this run builds "
        f"({', '.join(differs) or mismatch}); resume with the run's own config, or start a new run with "
        f"model.init_from={path} to fine-tune from it")


def _num_classes(state_dict: dict[str, Any]) -> Optional[int]:
    head = state_dict.get("head.weight")
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim == 2 else None


def is_run_checkpoint(name: str) -> bool:
    """Whether a file name is one a run writes (last.pth, best.pth, epoch-N.pth, step-N.pth): other .pth files
    in a run folder (a teacher, a copied release file) are inputs, never resumed from."""
    return name in (LAST, BEST) or bool(_EPOCH_PATTERN.fullmatch(name) or _STEP_PATTERN.fullmatch(name))


def _candidates(folder: str) -> list[str]:
    """Checkpoint files of a run, newest first; best.pth last among equals (it may be older than last)."""
    files = [p for p in glob.glob(os.path.join(folder, "*.pth")) if is_run_checkpoint(os.path.basename(p))]
    return sorted(files, key=lambda p: (os.path.getmtime(p), os.path.basename(p) != BEST), reverse=True)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def find_resume_checkpoint(folder: str) -> Optional[tuple[str, TrainingCheckpoint]]:
    """Newest loadable checkpoint in `folder` of any kind, saying which files were skipped and why."""
    skipped = []
    for path in _candidates(folder):
        try:
            ckpt = load_training_checkpoint(path)
        except Exception as e:
            _logger.warning("Skipping checkpoint %s: it cannot be loaded (%s)", path, _reason(e))
            skipped.append(os.path.basename(path))
            continue
        if skipped:
            _logger.warning("Resuming from %s, the newest loadable checkpoint (skipped: %s)",
                            os.path.basename(path), ", ".join(skipped))
        return path, ckpt
    return None


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete `.tmp-*.pth` files that a killed save left behind; return their names."""
    removed = []
    for path in glob.glob(os.path.join(folder, ".tmp-*.pth")):
        try:
            os.remove(path)
            removed.append(os.path.basename(path))
        except FileNotFoundError:
            pass
    if removed:
        _logger.info("Removed %d unfinished checkpoint file(s) left by an interrupted save: %s",
                     len(removed), ", ".join(removed))
    return removed


def _link_or_copy(src: str, dst: str) -> None:
    """Make `dst` a copy of the finished file `src`: a hard link where the filesystem allows, atomically
    (t2t.outputs.atomic_output: a copy reaches the disk before the rename, and the rename is made durable)."""
    with atomic_output(dst, suffix=".pth") as tmp:
        os.remove(tmp)  # the name is reserved; a link needs it free
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FUSE filesystems): copy the bytes
            shutil.copyfile(src, tmp)


class CheckpointWriter:
    """Writes last / best / per-epoch / per-step checkpoints of a run; only rank 0 should call it."""

    def __init__(self, folder: str, keep_epochs: int = 0, keep_steps: int = 1, keep_best: int = 0) -> None:
        self.folder = folder
        self.keep_epochs = keep_epochs
        self.keep_steps = keep_steps
        self.keep_best = keep_best

    def save(self, state: dict[str, Any], *, epoch: int, step: int, end_of_epoch: bool, is_best: bool,
             score: Optional[tuple[str, float]] = None) -> str:
        """Save `state` (at `epoch`, `step`) as last.pth (and best / epoch-N / step-N as asked); return the main path.

        `score` (metric name, value) of an evaluated epoch ranks it among the `keep_best` best checkpoints.
        """
        # Serialised once; best / epoch-N are hard links to the same bytes (rank 0's write stalls
        # every other rank in its next collective, so a 1 GB checkpoint must not be written thrice).
        if end_of_epoch:
            path = os.path.join(self.folder, LAST)
            atomic_save(state, path)
            if self.keep_epochs:
                _link_or_copy(path, os.path.join(self.folder, f"epoch-{epoch:04d}.pth"))
                self._prune(_EPOCH_PATTERN, self.keep_epochs)
            # Mid-epoch files of this and earlier epochs are superseded by last.pth.
            self._prune(_STEP_PATTERN, 0)
        else:
            path = os.path.join(self.folder, f"step-{step:08d}.pth")
            atomic_save(state, path)
            self._prune(_STEP_PATTERN, self.keep_steps)
        if is_best:
            _link_or_copy(path, os.path.join(self.folder, BEST))
        if end_of_epoch and score is not None and self.keep_best:
            self._keep_best(path, epoch, *score)
        return path

    def _keep_best(self, path: str, epoch: int, metric: str, value: float) -> None:
        """Link this epoch in as best-epoch-N-metric-value.pth if it ranks among the K best found in the
        folder (so the ranking carries over a resume), and remove the ones pushed out."""
        new = os.path.join(self.folder, best_checkpoint_name(epoch, metric, value))
        ranked = sorted([f for f in kept_best_checkpoints(self.folder, metric) if f[1] != epoch] +
                        [(float(f"{value:.3f}"), epoch, new)], key=lambda f: (-f[0], f[1]))
        kept = ranked[:self.keep_best]
        if any(f[2] == new for f in kept):
            _link_or_copy(path, new)
        for _, _, old in ranked[self.keep_best:]:
            if old != new:
                os.remove(old)

    def _prune(self, pattern: re.Pattern, keep: int) -> None:
        found = sorted(
            (int(m.group(1)), os.path.join(self.folder, name))
            for name in os.listdir(self.folder) if (m := pattern.search(name)))
        for _, path in found[:max(0, len(found) - keep)]:
            os.remove(path)


class Checkpointer:
    """Saves the run: the Trainer's state with what describes the run, as one TrainingCheckpoint.

    Every rank calls `save` (the Trainer's state is a collective); only the rank holding `writer` writes.
    """

    def __init__(self, writer: Optional[CheckpointWriter], *, arch: str, config: dict[str, Any],
                 run: dict[str, Any], trackers: Optional[dict[str, str]] = None) -> None:
        self.writer = writer
        self.arch, self.config, self.run = arch, config, run
        self.trackers = trackers or {}  # the trackers' run ids, so a resume continues their runs

    def save(self, trainer: Any, *, end_of_epoch: bool, is_best: bool = False,
             score: Optional[tuple[str, float]] = None) -> None:
        state = trainer.state_dict()  # collective: every rank takes part
        if self.writer is None:
            return
        ckpt = TrainingCheckpoint(trainer=state, arch=self.arch, config=self.config, run=self.run,
                                  versions=library_versions(), trackers=self.trackers)
        epoch, step = trainer.state.epoch, trainer.state.global_step
        t0 = time.perf_counter()
        saved = self.writer.save(ckpt.to_dict(), epoch=epoch, step=step, end_of_epoch=end_of_epoch, is_best=is_best,
                                 score=score)
        if isinstance(saved, str):  # a CheckpointWriter: the file is written
            _logger.info("Saved %s (epoch %d, step %d) in %.1f s", saved, epoch, step, time.perf_counter() - t0)
        else:  # a BackgroundCheckpointWriter: the seconds training was held; the file follows
            _logger.info("Checkpoint of epoch %d step %d taken in %.2f s; writing it in the background",
                         epoch, step, saved)
