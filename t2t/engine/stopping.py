"""When a run saves mid-epoch and when it stops: signals, the minutes timer, every_steps, max_steps.

Ranks must act on host-side events (a SIGTERM reaching one of them, a timer) at the same step, so
with several processes they are agreed on at log steps, where the host has waited for the device
anyway: a stop takes effect within `train.log_interval` steps.
"""
from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Any, Optional

from .collectives import sum_over_ranks

_logger = logging.getLogger("t2t.train")


@dataclass(frozen=True)
class StopDecision:
    save: bool = False  # take a mid-epoch checkpoint now
    stop: bool = False  # leave the epoch loop (after saving)
    reason: Optional[str] = None  # 'SIGTERM' or 'SIGINT' when a signal asked for the stop


class StopPolicy:
    """Decides after every optimizer step whether to save and whether to stop; a context manager for the signals.

    SIGTERM and SIGINT set a flag; the run saves at the next agreed step and exits. A second SIGINT
    (Ctrl-C twice) stops at once, without saving.
    """

    def __init__(self, *, steps_per_epoch: int, every_steps: int = 0, every_minutes: float = 0.0,
                 max_steps: Optional[int] = None, distributed: bool = False) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.every_steps = every_steps
        self.every_minutes = every_minutes
        self.max_steps = max_steps
        self.distributed = distributed
        self.terminate = False  # SIGTERM seen (this process)
        self.interrupt = False  # SIGINT seen (this process)
        self.preempted = False  # the run stopped for an agreed SIGTERM
        self.interrupted = False  # the run stopped for an agreed SIGINT
        self._last_save = time.monotonic()
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopPolicy":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.interrupt:
                raise KeyboardInterrupt
            self.interrupt = True
            _logger.warning("Ctrl-C: saving at the end of this step (press it again to stop without saving)")
        else:
            self.terminate = True

    def saved(self) -> None:
        """A checkpoint was just written: the minutes timer starts again."""
        self._last_save = time.monotonic()

    def after_step(self, global_step: int, step_in_epoch: int, synced: bool) -> StopDecision:
        """What to do after the step that brought the run to `global_step`; `synced`: a log step.

        A collective with several processes at log steps: every rank must call it after every step.
        """
        terminate = interrupt = minutes_due = False
        if synced or not self.distributed:
            minutes_due = self.every_minutes > 0 and time.monotonic() - self._last_save >= 60 * self.every_minutes
            flags = [self.terminate, self.interrupt, minutes_due]
            if self.distributed:  # one verdict for all ranks
                flags = [v > 0 for v in sum_over_ranks(*flags)]
            terminate, interrupt, minutes_due = flags
        at_max = self.max_steps is not None and global_step >= self.max_steps
        end_of_epoch = step_in_epoch == self.steps_per_epoch  # the end-of-epoch checkpoint follows anyway
        signalled = terminate or interrupt
        due = (self.every_steps > 0 and global_step % self.every_steps == 0) or minutes_due or signalled or at_max
        reason = None
        if signalled:
            self.preempted, self.interrupted = terminate, not terminate
            reason = "SIGTERM" if terminate else "SIGINT"
        return StopDecision(save=due and not end_of_epoch, stop=signalled or at_max, reason=reason)
