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

    def __init__(self, folder: Optional[str], tensorboard: bool = True) -> None:
        self.folder = folder
        self.writer = None
        if folder is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(folder, "tensorboard"))

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

