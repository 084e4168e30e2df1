"""The checkpoint schema: what is written is what is read, and files of the previous format still resume."""
import os
import shutil

import pytest
import timm
import torch
from timm.utils import ModelEmaV3

from t2t.config import config_from_dict
from t2t.engine import run as run_module
from t2t.engine.checkpoint import load_training_checkpoint
from t2t.engine.checkpoint_schema import FORMAT, TRAINER_KEYS, TrainingCheckpoint
from t2t.engine.losses import SoftTargetLoss
from t2t.engine.optim import LRSchedule
from t2t.engine.plan import RunPlan
from t2t.engine.trainer import Trainer
from t2t.models.t2t_vit import T2TViT
from t2t.models.weights import CheckpointError, load_pretrained_weights
from train_helpers import ROOT, load, make_data

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
FORMAT1 = os.path.join(FIXTURES, "format1_step5.pth")  # written by the code before the schema (see its maker)


class _Recording(dict):
    """A dict that notes which keys were read (nested dicts too), as 'a.b' paths."""

    def __init__(self, values, seen, prefix=""):
        super().__init__(values)
        self.seen, self.prefix = seen, prefix

    def _wrap(self, key, value):
        self.seen.add(self.prefix + str(key))
        if isinstance(value, dict) and key in ("train_state", "rng"):
            return _Recording(value, self.seen, f"{self.prefix}{key}.")
        return value

    def __getitem__(self, key):
        return self._wrap(key, super().__getitem__(key))

    def get(self, key, default=None):
        return self._wrap(key, super().get(key, default))


def _paths(values, prefix=""):
    out = set()
    for key, value in values.items():
        out.add(prefix + key)
        if isinstance(value, dict) and key in ("train_state", "rng"):
            out |= _paths(value, f"{prefix}{key}.")
    return out


def _tiny_trainer():
    model = timm.create_model("t2t_vit_t_14", img_size=32, num_classes=3, depth=1)
    schedule = LRSchedule(base_lr=1e-3, warmup_lr=1e-3, min_lr=1e-3, warmup_epochs=0, epochs=1, steps_per_epoch=4)
    return Trainer(model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), schedule=schedule,
                   loss_fn=SoftTargetLoss(3, smoothing=0.1), device=torch.device("cpu"),
                   ema=ModelEmaV3(model, decay=0.9))


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 3, (2,), generator=g)) for _ in range(n)]


def test_trainer_state_is_restored_field_by_field():
    """Every entry Trainer.state_dict writes (train_state and rng fields included) is read by load_state_dict,
    and the restored Trainer saves the same state again."""
    trainer = _tiny_trainer()
    trainer.train_epoch(_batches(2), 2)
    saved = trainer.state_dict()
    assert set(saved) == set(TRAINER_KEYS)
    seen = set()
    restored = _tiny_trainer()
    restored.load_state_dict(_Recording(saved, seen))
    assert seen == _paths(saved), f"written but never read: {sorted(_paths(saved) - seen)}"
    again = restored.state_dict()
    assert again["train_state"] == saved["train_state"]
    for key in ("model", "state_dict_ema"):
        assert all(torch.equal(again[key][k], saved[key][k]) for k in saved[key]), key


def test_checkpoint_entries_are_all_read():
    trainer = _tiny_trainer()
    ckpt = TrainingCheckpoint(trainer=trainer.state_dict(), arch="t2t_vit_t_14", config={"model": {}},
                              run={"world_size": 1}, versions={"torch": torch.__version__})
    written = ckpt.to_dict()
    seen = set()
    back = TrainingCheckpoint.from_dict(_Recording(written, seen), path="x.pth")
    assert {k for k in seen if "." not in k} == set(written), f"never read: {set(written) - seen}"
    assert back.format == FORMAT and back.global_step == 0 and back.arch == "t2t_vit_t_14"


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(format=99), "has format 99"),
    (lambda d: d.pop("optimizer"), "no 'optimizer' entry"),
    (lambda d: d.update(extra=1), "does not know: extra"),
    (lambda d: d.pop("train_state"), "not a t2t training checkpoint"),
])
def test_checkpoints_the_schema_cannot_read_are_refused_in_one_line(change, message):
    values = TrainingCheckpoint(trainer=_tiny_trainer().state_dict(), arch="a", config={}, run=None,
                                versions={}).to_dict()
    change(values)
    with pytest.raises(CheckpointError, match=message):
        TrainingCheckpoint.from_dict(values, path="x.pth")


def test_a_format_1_checkpoint_reads_through_the_schema():
    ckpt = load_training_checkpoint(FORMAT1)
    assert ckpt.format == 1 and ckpt.global_step == 5 and ckpt.epoch == 0 and ckpt.arch == "t2t_vit_7"
    assert set(ckpt.trainer) == set(TRAINER_KEYS) and set(ckpt.trainer["rng"]) == {"torch"}
    plan = RunPlan.from_dict(ckpt.run)
    assert plan.global_batch_size == 4 and plan.classes == ["disc", "square", "triangle"]
    assert config_from_dict(ckpt.config).model.name == "t2t_vit_7"
    # Re-written in the current format, it reads back the same.
    again = TrainingCheckpoint.from_dict(ckpt.to_dict(), path="again.pth")
    assert again.format == FORMAT and again.train_state == ckpt.train_state and again.run == ckpt.run


def test_init_from_reads_a_training_checkpoint_through_the_schema(tmp_path):
    """model.init_from takes the weights of a format-1 or format-2 file, and refuses a damaged one in one line."""
    ckpt = load_training_checkpoint(FORMAT1)
    model = _tiny_model(config_from_dict(ckpt.config), 3)
    assert load_pretrained_weights(model, FORMAT1) == "state_dict_ema"
    assert all(torch.equal(v, ckpt.trainer["state_dict_ema"][k]) for k, v in model.state_dict().items())
    damaged = ckpt.to_dict()
    damaged["format"] = 99
    torch.save(damaged, tmp_path / "future.pth")
    with pytest.raises(CheckpointError, match=r"future.pth' has format 99"):
        load_pretrained_weights(model, tmp_path / "future.pth")


def _tiny_model(cfg, num_classes):  # the model the fixture was trained with (see fixtures/make_format1_checkpoint.py)
    return T2TViT(img_size=cfg.model.img_size, num_classes=num_classes, embed_dim=32, depth=1, num_heads=2,
                  mlp_ratio=1.0, token_dim=8, drop_path_rate=cfg.model.drop_path_rate)


def _as_format_1(old, ours, path=""):
    """The stored format-1 file's layout and counters, holding this machine's numbers: every tensor and
    float of `old` is taken from `ours` at the same place; every other value (counters, names, the copies
    format 1 kept) stays as the previous version wrote it, and is checked against `ours` where both have it.
    The stored config is kept whole: it is settings, read through the config's renames."""
    if path.startswith("config."):
        return old
    if torch.is_tensor(old) or isinstance(old, float):
        assert ours is not _MISSING, f"{path}: the format-1 file holds a number the current format lacks"
        if torch.is_tensor(old):
            assert old.shape == ours.shape and old.dtype == ours.dtype, path
        return ours
    if isinstance(old, dict):
        mine = ours if isinstance(ours, dict) else {}
        return {k: _as_format_1(v, mine.get(k, _MISSING), f"{path}{k}.") for k, v in old.items()}
    if isinstance(old, list) and isinstance(ours, list) and len(old) == len(ours):
        return [_as_format_1(o, m, f"{path}{i}.") for i, (o, m) in enumerate(zip(old, ours))]
    if ours is not _MISSING and not path.startswith(_MACHINE_SPECIFIC):
        assert old == ours, f"{path}: the format-1 file holds {old!r}, this version wrote {ours!r}"
    return old


_MISSING = object()
# Where the files may differ for reasons other than the layout: the data folder, the library versions, the
# format number.
_MACHINE_SPECIFIC = ("run.data_dir.", "versions.", "format.")


@pytest.mark.slow
def test_a_format_1_checkpoint_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A file in the previous version's layout, resumed by this one, ends where this version's own
    uninterrupted run ends: same weights, EMA and per-epoch metrics, bit for bit.

    The stored fixture's numbers were computed on another CPU, and a resume is exact only on the machine
    that computed it, so the file resumed here is the fixture's layout and counters (as the previous version
    wrote them, and checked against what this version writes) filled with this machine's step-5 numbers."""
    monkeypatch.setattr(run_module, "_build_model", _tiny_model)
    data = make_data(str(tmp_path / "data"))
    stored = load(FORMAT1)
    cfg = config_from_dict(load_training_checkpoint(FORMAT1).config)  # stopped with train.max_steps=5
    stopped = run_module.run(cfg, data_dir=data, output=str(tmp_path / "stopped"))
    cfg.train.max_steps = None
    full = run_module.run(cfg, data_dir=data, output=str(tmp_path / "full"))

    step5 = load(os.path.join(stopped.output, "step-00000005.pth"))
    assert step5["format"] == FORMAT and step5["train_state"]["global_step"] == 5
    out = tmp_path / "run"
    out.mkdir()
    torch.save(_as_format_1(stored, step5), out / "step-00000005.pth")
    assert load_training_checkpoint(str(out / "step-00000005.pth")).format == 1
    result = run_module.run(cfg, data_dir=data, output=str(out), resume="auto")

    ours, theirs = load(os.path.join(result.output, "last.pth")), load(os.path.join(full.output, "last.pth"))
    assert ours["train_state"]["global_step"] == theirs["train_state"]["global_step"] == 18
    for key in ("model", "state_dict_ema"):
        for name, tensor in theirs[key].items():
            assert torch.equal(ours[key][name], tensor), f"{key}.{name}"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]  # noqa: E731
    assert strip(ours["train_state"]["history"]) == strip(theirs["train_state"]["history"])
