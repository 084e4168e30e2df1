"""Checkpoints that cannot be lost: atomic writes, self-describing contents, resume from the newest valid file."""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Optional

import torch

from ..models.weights import strip_prefixes

_logger = logging.getLogger(__name__)

LAST = "last.pth"
BEST = "best.pth"
_EPOCH_PATTERN = re.compile(r"epoch-(\d+)\.pth$")
_STEP_PATTERN = re.compile(r"step-(\d+)\.pth$")


def library_versions() -> dict[str, str]:
    import timm
    import torchvision

    from .. import __version__

    return {"t2t": str(__version__), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "timm": str(timm.__version__)}


def clean_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict without DDP (`module.`) or torch.compile (`_orig_mod.`) prefixes."""
    return strip_prefixes(module.state_dict())


def atomic_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename onto `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_training_checkpoint(path: str) -> dict[str, Any]:
    """Load one of our training checkpoints (plain data only) on the CPU."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "global_step" not in ckpt:
        raise ValueError(f"{path!r} is not a t2t training checkpoint (no 'model'/'global_step' entries)")
    return ckpt


def _candidates(folder: str) -> list[str]:
    """Checkpoint files of a run, newest first; best.pth last among equals (it may be older than last)."""
    files = [p for p in glob.glob(os.path.join(folder, "*.pth")) if not os.path.basename(p).startswith(".tmp-")]
    return sorted(files, key=lambda p: (os.path.getmtime(p), os.path.basename(p) != BEST), reverse=True)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def find_resume_checkpoint(folder: str) -> Optional[tuple[str, dict[str, Any]]]:
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
    """Make `dst` a copy of the finished file `src`: a hard link where the filesystem allows, atomically."""
    folder = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    os.close(fd)
    try:
        os.remove(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FUSE filesystems): copy the bytes
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class CheckpointWriter:
    """Writes last / best / per-epoch / per-step checkpoints of a run; only rank 0 should call it."""

    def __init__(self, folder: str, keep_epochs: int = 0, keep_steps: int = 1) -> None:
        self.folder = folder
        self.keep_epochs = keep_epochs
        self.keep_steps = keep_steps

    def save(self, state: dict[str, Any], *, end_of_epoch: bool, is_best: bool) -> str:
        """Save `state` as last.pth (and best / epoch-N / step-N as asked); return the main path."""
        epoch, step = state["epoch"], state["global_step"]
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
        return path

    def _prune(self, pattern: re.Pattern, keep: int) -> None:
        found = sorted(
            (int(m.group(1)), os.path.join(self.folder, name))
            for name in os.listdir(self.folder) if (m := pattern.search(name)))
        for _, path in found[:max(0, len(found) - keep)]:
            os.remove(path)
