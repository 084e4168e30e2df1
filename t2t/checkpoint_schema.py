"""What a training checkpoint holds: one dataclass, written by `to_dict` and read by `from_dict`.

On disk (format 2) a checkpoint is a plain dict (tensors, numbers, strings, lists, dicts), loadable
with ``torch.load(weights_only=True)``:

    format          2
    arch            the model name (as timm and the official releases record it)
    model           the model's state dict
    state_dict_ema  the EMA weights' state dict, or None
    optimizer       the optimizer's state dict
    scaler          the GradScaler's state dict
    train_state     the Trainer's counters, running meters, best metric and per-epoch history
    rng             {"torch": the CPU generator state}
    config          the run's config (Config.to_dict())
    run             the RunPlan (global batch, world size, classes, ...)
    versions        the libraries that wrote it (a resume warns when they differ)
    trackers        {tracker: run id} of the experiment trackers (wandb, mlflow), so a resume continues
                    their runs; optional (files written before it have none)

The first six entries after ``arch`` are the Trainer's state (`Trainer.state_dict()`), the rest
describe the run. Format 1 (written until the schema existed) also stored copies of the position
(``epoch``, ``step_in_epoch``, ``global_step``, ``samples_in_epoch``, ``samples_seen``) and the CUDA
generator states; they are accepted and dropped. Tools that only need the weights read them with
`t2t.models.weights.extract_state_dict`, which also understands the official release files.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .errors import CheckpointError
from .version import __version__

_logger = logging.getLogger(__name__)

FORMAT = 2
# The Trainer's entries (Trainer.state_dict()), then the run's.
TRAINER_KEYS = ("model", "state_dict_ema", "optimizer", "scaler", "train_state", "rng")
RUN_KEYS = ("arch", "config", "run", "versions")
OPTIONAL_KEYS = ("trackers",)
# Format 1 wrote these copies of the position and the CUDA generators: read as nothing.
_FORMAT1_DROPPED = ("epoch", "step_in_epoch", "global_step", "samples_in_epoch", "samples_seen")


def library_versions() -> dict[str, str]:
    import timm
    import torchvision

    return {"t2t": str(__version__), "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "timm": str(timm.__version__)}


@dataclass
class TrainingCheckpoint:
    """A training checkpoint: the Trainer's state and what describes the run."""

    trainer: dict[str, Any]  # Trainer.state_dict(): the TRAINER_KEYS entries
    arch: str
    config: dict[str, Any]
    run: Optional[dict[str, Any]]  # RunPlan.to_dict(); None in format-1 files written before it was stored
    versions: dict[str, str]
    trackers: dict[str, str] = field(default_factory=dict)  # tracker name -> its run id
    format: int = FORMAT  # the format the file was written in (from_dict); to_dict always writes FORMAT

    @property
    def train_state(self) -> dict[str, Any]:
        return self.trainer["train_state"]

    @property
    def epoch(self) -> int:
        return self.train_state["epoch"]

    @property
    def global_step(self) -> int:
        return self.train_state["global_step"]

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        return self.trainer["model"]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "arch": self.arch, **{k: self.trainer[k] for k in TRAINER_KEYS},
                "config": self.config, "run": self.run, "versions": self.versions, "trackers": dict(self.trackers)}

    @classmethod
    def from_dict(cls, values: Any, *, path: str) -> "TrainingCheckpoint":
        """Read a loaded checkpoint file (format 1 or 2); CheckpointError naming what is wrong."""
        if not isinstance(values, dict) or "model" not in values or "train_state" not in values:
            missing = [k for k in ("model", "train_state") if not isinstance(values, dict) or k not in values]
            found = f"keys {sorted(map(str, values))[:8]}" if isinstance(values, dict) else \
                f"a {type(values).__name__}"
            raise CheckpointError(
                f"checkpoint {path!r} is not a t2t training checkpoint: no {' / '.join(map(repr, missing))} entry "
                f"(it holds {found}); to start from its weights, use model.init_from={path} without --resume")
        version = values.get("format", 1)
        if version not in (1, FORMAT):
            raise CheckpointError(f"checkpoint {path!r} has format {version!r}; this version of t2t reads formats "
                                  f"1 and {FORMAT}: use the t2t version that wrote it")
        required = TRAINER_KEYS + RUN_KEYS if version == FORMAT else ("model", "optimizer", "scaler", "train_state",
                                                                      "config")
        missing = [k for k in required if k not in values]
        if missing:
            raise CheckpointError(f"checkpoint {path!r} is incomplete: no {', '.join(map(repr, missing))} entry")
        known = {"format", *TRAINER_KEYS, *RUN_KEYS, *OPTIONAL_KEYS, *(_FORMAT1_DROPPED if version == 1 else ())}
        unknown = sorted(set(map(str, values)) - known)
        if unknown:
            raise CheckpointError(f"checkpoint {path!r} (format {version}) has entries this version of t2t does not "
                                  f"know: {', '.join(unknown)}")
        rng = values.get("rng") or {}
        trainer = {k: values.get(k) for k in TRAINER_KEYS}
        # Format 1 stored the CUDA generators too; every micro-step reseeds all devices, so they never mattered.
        trainer["rng"] = {"torch": rng.get("torch")}
        return cls(trainer=trainer, arch=values.get("arch") or values["config"].get("model", {}).get("name"),
                   config=values["config"], run=values.get("run"), versions=values.get("versions") or {},
                   trackers=dict(values.get("trackers") or {}), format=version)

    def warn_if_versions_differ(self, path: str) -> None:
        """Exact resume holds for the library versions that wrote the checkpoint: say when they differ."""
        now = library_versions()
        changed = [f"{k} {self.versions[k]} -> {v}" for k, v in now.items()
                   if k in self.versions and self.versions[k] != v]
        if changed:
            _logger.warning("Resuming %s with other library versions (%s): the run continues, but not "
                            "bit-identically", path, ", ".join(changed))


def weight_entries(checkpoint: Any, *, path: str) -> Any:
    """What a file holds for loading weights: a training checkpoint of ours is read through the schema (format
    and keys checked) and reduced to its two weight entries; any other layout is returned as it is."""
    if isinstance(checkpoint, dict) and "train_state" in checkpoint:
        ours = TrainingCheckpoint.from_dict(checkpoint, path=path)
        return {"state_dict_ema": ours.trainer["state_dict_ema"], "model": ours.weights}
    return checkpoint
