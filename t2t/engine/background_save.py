"""Checkpoint writes that do not stop training: snapshot at the save point, write in a background thread.

At the save point the state is copied to CPU memory (pinned and reused between saves on CUDA, so
the device-to-host copy runs at full speed and allocates nothing after the first save); training
then continues while a background thread serialises, fsyncs and renames the file into place through
the same CheckpointWriter (atomic: a process killed mid-write leaves the previous checkpoint, and
the `.tmp-*` file it leaves is ignored by the resume choice and removed at the next start).

Rules: a save waits for the previous write to end before it snapshots (never two writes at once,
and the pinned buffers are free again); an error of the writer thread is raised at the next save
or at `wait()` / `close()`, never lost; the exits of a run (end, SIGTERM, an error) call `close()`
so that the last checkpoint is on disk before the process ends.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Iterator, Optional

import torch

from .checkpoint import CheckpointWriter

_logger = logging.getLogger(__name__)


class BackgroundCheckpointWriter:
    """CheckpointWriter.save in a background thread, one write at a time, on a snapshot of the state."""

    def __init__(self, writer: CheckpointWriter, *, pin_memory: bool = False,
                 on_written: Optional[Callable[[int], None]] = None) -> None:
        self.writer = writer
        self.pin_memory = pin_memory
        self.on_written = on_written  # called (in the writer thread) with the step of each checkpoint on disk
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._buffers: dict[tuple, torch.Tensor] = {}  # reused host copies, by position in the state

    # -- snapshot -------------------------------------------------------------------------------

    def _host_copy(self, t: torch.Tensor, key: tuple) -> torch.Tensor:
        # Reused from the previous save (the write that read it has ended): no fresh pages to fault in.
        t = t.detach()
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin_memory and t.device.type == "cuda")
            self._buffers[key] = buf
        buf.copy_(t, non_blocking=buf.is_pinned())
        return buf

    def snapshot(self, obj: Any, key: tuple = ()) -> Any:
        """`obj` with every tensor copied to the host: training may change the originals from now on."""
        if isinstance(obj, torch.Tensor):
            return self._host_copy(obj, key)
        if isinstance(obj, dict):
            copy = {k: self.snapshot(v, key + (k,)) for k, v in obj.items()}
            if isinstance(obj, OrderedDict):  # a state dict: keep its type and the version metadata
                copy = OrderedDict(copy)
                if hasattr(obj, "_metadata"):
                    copy._metadata = obj._metadata  # type: ignore[attr-defined]
            return copy
        if isinstance(obj, list):
            return [self.snapshot(v, key + (i,)) for i, v in enumerate(obj)]
        if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
            return tuple(self.snapshot(v, key + (i,)) for i, v in enumerate(obj))
        return obj

    # -- writing --------------------------------------------------------------------------------

    def save(self, state: dict[str, Any], *, epoch: int, step: int, end_of_epoch: bool, is_best: bool,
             score: Optional[tuple[str, float]] = None) -> float:
        """Snapshot `state` (at `epoch`, `step`) and start writing it; returns the seconds training was held
        (wait + snapshot)."""
        start = time.perf_counter()
        self.wait()  # the previous write must end first (and raises its error here)
        snap = self.snapshot(state)
        if self.pin_memory and torch.cuda.is_available():
            torch.cuda.synchronize()  # the non-blocking copies have landed before the thread reads them
        held = time.perf_counter() - start
        self._thread = threading.Thread(target=self._write, args=(snap, epoch, step, end_of_epoch, is_best, score),
                                        name="checkpoint-writer", daemon=False)
        self._thread.start()
        return held

    def _write(self, snap: dict[str, Any], epoch: int, step: int, end_of_epoch: bool, is_best: bool,
               score: Optional[tuple[str, float]]) -> None:
        start = time.perf_counter()
        try:
            path = self.writer.save(snap, epoch=epoch, step=step, end_of_epoch=end_of_epoch, is_best=is_best,
                                    score=score)
        except BaseException as e:  # kept for the training thread: raised at the next save or at close
            self._error = e
            return
        _logger.info("Saved %s (epoch %d, step %d) in %.1f s, in the background", path, epoch, step,
                     time.perf_counter() - start)
        if self.on_written is not None:
            self.on_written(step)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Return once no write is in progress; raise the error of the last write, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Wait for the pending write (exits of the run) and free the host buffers."""
        try:
            self.wait()
        finally:
            self._buffers.clear()


@contextlib.contextmanager
def writes_finished(writer: Optional[BackgroundCheckpointWriter]) -> Iterator[None]:
    """Around a training loop: on any exit, wait for the pending write (its error is raised, except
    while another error is on its way out, which it must not hide: then it is logged)."""
    try:
        yield
    except BaseException:
        if writer is not None:
            try:
                writer.close()
            except Exception as e:
                _logger.error("The last checkpoint write failed as well: %s", e)
        raise
    if writer is not None:
        writer.close()
