"""The Trainer and its checkpoints: a step changes weights and EMA, accumulation, mixed precision, NaN stops,
crash-safe saves and the fallback to an older checkpoint."""
import os
import time

import pytest
import timm
import torch

from t2t.config import load_config
from t2t.engine.checkpoint import CheckpointWriter, atomic_save, find_resume_checkpoint, kept_best_checkpoints
from t2t.engine.losses import SoftTargetLoss
from t2t.engine.optim import LRSchedule
from t2t.engine.run import run
from t2t.engine.trainer import NonFiniteLossError, Trainer, TrainState
from train_helpers import fake_checkpoint, load, make_data, save_fake, write_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")))


def _flat_schedule(lr=1e-3):
    return LRSchedule(base_lr=lr, warmup_lr=lr, min_lr=lr, warmup_epochs=0, epochs=10, steps_per_epoch=10)


def _train_steps(model, batches, *, accum=1, amp="none", lr=1e-3, state=None, scaler=None, sgd=False):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr) if sgd else torch.optim.AdamW(params, lr=lr)
    scaler = scaler or torch.amp.GradScaler("cpu", enabled=amp == "fp16")
    trainer = Trainer(model, optimizer=optimizer, schedule=_flat_schedule(lr), loss_fn=SoftTargetLoss(3),
                      device=torch.device("cpu"), scaler=scaler, amp=amp, accum_steps=accum)
    trainer.state = state or TrainState()
    trainer.train_epoch(batches, len(batches) // accum)
    return trainer.state, scaler


def test_one_epoch_changes_weights_and_ema(data_dir, tmp_path):
    cfg = load_config(write_config(str(tmp_path)), ["train.epochs=1", "sched.cooldown_epochs=0"])
    torch.manual_seed(cfg.train.seed)
    initial = timm.create_model("t2t_vit_7", img_size=32, num_classes=3).state_dict()
    result = run(cfg, data_dir=data_dir, output=str(tmp_path / "run"))
    ckpt = load(os.path.join(result.output, "last.pth"))
    assert ckpt["train_state"]["global_step"] == 9 and ckpt["train_state"]["epoch"] == 1  # 36 images / batch 4
    for key in ("blocks.0.attn.qkv.weight", "tokens_to_token.attention1.kqv.weight", "head.weight"):
        assert not torch.equal(ckpt["model"][key], initial[key]), key
        assert not torch.equal(ckpt["state_dict_ema"][key], initial[key]), key
        assert not torch.equal(ckpt["state_dict_ema"][key], ckpt["model"][key]), key
    # Fixed tensors are never trained.
    assert torch.equal(ckpt["model"]["pos_embed"], initial["pos_embed"])
    assert torch.equal(ckpt["model"]["tokens_to_token.attention1.w"], initial["tokens_to_token.attention1.w"])
    row = ckpt["train_state"]["history"][0]
    for key in ("epoch", "train_loss", "lr", "val_loss", "val_top1", "val_top5", "ema_val_top1", "ema_val_top5",
                "images_per_sec"):
        assert key in row
    files = set(os.listdir(result.output))
    assert {"config.yaml", "last.pth", "best.pth", "summary.csv", "log.jsonl", "train.log"} <= files
    assert load_config(os.path.join(result.output, "config.yaml")) == cfg
    # Every checkpoint is plain data.
    assert torch.load(os.path.join(result.output, "best.pth"), weights_only=True)["config"]["model"]["img_size"] == 32


def test_accumulation_of_two_equals_a_batch_of_two_micro_batches():
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,))
    # The token-transformer variant has no fixed dropout, so both runs see the same function.
    reference = timm.create_model("t2t_vit_t_14", img_size=32, num_classes=3, depth=2)
    accumulated = timm.create_model("t2t_vit_t_14", img_size=32, num_classes=3, depth=2)
    accumulated.load_state_dict(reference.state_dict())
    initial = {n: p.detach().clone() for n, p in reference.named_parameters()}
    # Plain SGD: the weight change is lr x the gradient, so it compares the gradients themselves.
    _train_steps(reference, [(images, labels)], sgd=True, lr=1.0)
    state, _ = _train_steps(accumulated, [(images[:4], labels[:4]), (images[4:], labels[4:])], accum=2, sgd=True,
                            lr=1.0)
    assert state.global_step == 1
    for (name, a), b in zip(reference.named_parameters(), accumulated.parameters()):
        if a.requires_grad:
            assert not torch.equal(a, initial[name]), name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_fp16_autocast_with_grad_scaler_on_cpu():
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    before = model.head.weight.clone()
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))) for _ in range(3)]
    state, scaler = _train_steps(model, batches, amp="fp16")
    assert scaler.is_enabled() and state.global_step == 3
    assert state.skipped_steps <= 3  # counted, not fatal
    if state.skipped_steps < 3:
        assert not torch.equal(model.head.weight, before)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_autocast_path():
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    state, scaler = _train_steps(model, [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2,)))], amp="bf16")
    assert not scaler.is_enabled() and state.global_step == 1


def test_non_finite_loss_stops_the_run():
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="optimizer step 0"):
        _train_steps(model, [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2,)))])


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    atomic_save({"global_step": 1, "model": {"w": torch.ones(2)}}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"global_step": 2, "model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert load(path)["global_step"] == 1
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind


def test_damaged_newest_checkpoint_is_skipped(tmp_path, caplog):
    writer = CheckpointWriter(str(tmp_path))
    save_fake(writer, 9, 1, end_of_epoch=True, is_best=False)
    time.sleep(0.05)
    save_fake(writer, 12, 1, end_of_epoch=False, is_best=False)
    newest = tmp_path / "step-00000012.pth"
    newest.write_bytes(newest.read_bytes()[:20])  # truncated by a crash outside our control
    path, ckpt = find_resume_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "last.pth" and ckpt.global_step == 9
    assert "Skipping checkpoint" in caplog.text and "step-00000012.pth" in caplog.text
    assert "it cannot be loaded (CheckpointError: " in caplog.text  # the reason is never empty


def test_damaged_last_falls_back_to_best_and_says_why(tmp_path, caplog):
    writer = CheckpointWriter(str(tmp_path))
    save_fake(writer, 9, 1, end_of_epoch=True, is_best=True)
    time.sleep(0.05)
    save_fake(writer, 18, 2, end_of_epoch=True, is_best=False)
    (tmp_path / "last.pth").write_bytes(b"")  # a zero-byte file: EOFError has no message of its own
    path, ckpt = find_resume_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "best.pth" and ckpt.global_step == 9
    assert "last.pth: it cannot be loaded (" in caplog.text and "(skipped: last.pth)" in caplog.text


def test_best_and_epoch_copies_are_links_to_one_write(tmp_path, monkeypatch):
    writes = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (writes.append(obj["train_state"]["global_step"]),
                                                                real_save(obj, f, *a, **k)))
    writer = CheckpointWriter(str(tmp_path), keep_epochs=2)
    save_fake(writer, 9, 0, end_of_epoch=True, is_best=True)
    assert writes == [9]  # serialised once
    for name in ("best.pth", "epoch-0000.pth"):
        assert os.path.samefile(tmp_path / "last.pth", tmp_path / name)
    save_fake(writer, 18, 1, end_of_epoch=True, is_best=False)
    assert load(tmp_path / "best.pth")["train_state"]["global_step"] == 9  # replacing last.pth leaves best.pth as it was
    assert load(tmp_path / "last.pth")["train_state"]["global_step"] == 18


def test_keep_best_keeps_the_k_best_epochs_across_a_resume(tmp_path):
    scores = [70.0, 72.5, 71.0, 69.0, 74.25, 72.5]  # epochs 0..5 (epoch 5 ties epoch 1: the earlier one stays)
    first = CheckpointWriter(str(tmp_path), keep_best=2)
    for epoch in range(3):
        first.save(fake_checkpoint(9 * (epoch + 1), epoch), epoch=epoch, step=9 * (epoch + 1), end_of_epoch=True,
                   is_best=False, score=("ema_val_top1", scores[epoch]))
    assert sorted(os.listdir(tmp_path)) == ["best-epoch-0001-ema_val_top1-72.500.pth",
                                            "best-epoch-0002-ema_val_top1-71.000.pth", "last.pth"]
    resumed = CheckpointWriter(str(tmp_path), keep_best=2)  # a new process: the ranking comes from the folder
    for epoch in range(3, 6):
        resumed.save(fake_checkpoint(9 * (epoch + 1), epoch), epoch=epoch, step=9 * (epoch + 1), end_of_epoch=True,
                     is_best=False, score=("ema_val_top1", scores[epoch]))
        resumed.save(fake_checkpoint(9 * (epoch + 1) + 3, epoch + 1), epoch=epoch + 1, step=9 * (epoch + 1) + 3,
                     end_of_epoch=False, is_best=False)  # mid-epoch files never count
    kept = [(value, epoch) for value, epoch, _ in kept_best_checkpoints(str(tmp_path), "ema_val_top1")]
    assert kept == [(74.25, 4), (72.5, 1)]
    for value, epoch, path in kept_best_checkpoints(str(tmp_path), "ema_val_top1"):
        assert load(path)["train_state"]["epoch"] == epoch  # each file is that epoch's checkpoint
    assert kept_best_checkpoints(str(tmp_path), "val_top1") == []  # another metric's ranking is separate
