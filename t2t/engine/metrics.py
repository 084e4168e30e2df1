"""What the user sees: rank-0 progress lines, TensorBoard scalars, summary.csv and log.jsonl."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from typing import Any, Optional

from ..outputs import write_text

_logger = logging.getLogger("t2t.train")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RunLogger:
    """Per-step scalars to TensorBoard; one row per epoch to summary.csv and log.jsonl (rank 0 only)."""

    def __init__(self, folder: Optional[str], tensorboard: bool = True, *, resumed_step: Optional[int] = None) -> None:
        """`resumed_step`: the global step of the checkpoint a resumed run starts from. Steps after it may have
        been logged by the process that was stopped; TensorBoard drops every event from the step after it on
        (a purge marker at that step), so each step appears once, with the resumed run's values."""
        self.folder = folder
        self.writer = None
        if folder is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = None if resumed_step is None else resumed_step + 1
            self.writer = SummaryWriter(log_dir=os.path.join(folder, "tensorboard"), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def write_epochs(self, history: list[dict[str, Any]]) -> None:
        """Rewrite log.jsonl and summary.csv from the run's history (so a resumed run never repeats a row)."""
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
        self.scalars({f"epoch/{k}": v for k, v in last.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"}, last["epoch"])
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


