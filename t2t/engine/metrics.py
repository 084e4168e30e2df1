"""What the user sees: rank-0 progress lines, TensorBoard scalars, summary.csv, log.jsonl and the trackers."""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Any, Iterable, Optional

from ..outputs import write_text

_logger = logging.getLogger("t2t.train")


class RunLogger:
    """Per-step scalars to TensorBoard and the trackers; one row per epoch to summary.csv and log.jsonl (rank 0 only).

    `trackers` (t2t.engine.trackers.Trackers) get the same scalars; `checkpointed(step)`, which the
    checkpoint writer calls from its thread, tells them that a checkpoint at `step` is on disk.
    """

    def __init__(self, folder: Optional[str], tensorboard: bool = True, *, resumed_step: Optional[int] = None,
                 trackers: Any = None) -> None:
        """`resumed_step`: the global step of the checkpoint a resumed run starts from. Steps after it may have
        been logged by the process that was stopped; TensorBoard drops every event from the step after it on
        (a purge marker at that step), so each step appears once, with the resumed run's values (the trackers
        were started with the same step: t2t.engine.trackers)."""
        self.folder = folder
        self.trackers = trackers
        self.writer = None
        if folder is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = None if resumed_step is None else resumed_step + 1
            self.writer = SummaryWriter(log_dir=os.path.join(folder, "tensorboard"), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)
        if self.trackers is not None:
            self.trackers.log(values, step)

    def checkpointed(self, step: int) -> None:
        """A checkpoint at global step `step` is on disk (the writer's thread). The trackers send what they held
        back up to it now, not at the next log: a kill right after the write loses no step that the resumed
        run, which starts after `step`, does not log again."""
        if self.trackers is not None:
            self.trackers.checkpointed(step)

    def write_epochs(self, history: list[dict[str, Any]], *, scalar_keys: Optional[Iterable[str]] = None) -> None:
        """Rewrite log.jsonl and summary.csv from the run's history (so a resumed run never repeats a row).

        The last row's numbers go to TensorBoard, or only those of `scalar_keys` (columns added to a row
        already logged)."""
        if self.folder is None or not history:
            return
        write_text(os.path.join(self.folder, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
        fields = list(dict.fromkeys(k for r in history for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)
        write_text(os.path.join(self.folder, "summary.csv"), buf.getvalue())
        last = history[-1]
        keys = set(last) if scalar_keys is None else set(scalar_keys)
        values = {f"epoch/{k}": v for k, v in last.items() if k in keys
                  and isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, last["epoch"])
            self.writer.flush()
        if self.trackers is not None:  # one step axis in a tracker: the epoch's row at its last global step
            self.trackers.log({**values, "epoch/epoch": last["epoch"]}, last["global_step"])

    def close(self, failed: bool = False) -> None:
        """Close TensorBoard and the trackers (`failed`: the run ended by an error, without a final checkpoint)."""
        if self.writer is not None:
            self.writer.close()
        if self.trackers is not None:
            self.trackers.close(failed=failed)
