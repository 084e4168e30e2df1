"""What multi-GPU runs depend on, in one process: device choice, no host sync per step, leftover
micro-batches, a NaN before a save, the resume choice, one evaluation pass, uint8 batches on the device."""

import pytest
import timm
import torch

from t2t.engine import collectives, distributed
from t2t.engine.losses import SoftTargetLoss
from t2t.engine.optim import LRSchedule
from t2t.engine.stopping import StopPolicy
from t2t.engine.trainer import NonFiniteLossError, Trainer
from train_helpers import make_data, save_fake


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")), train=13)  # 39 images


# ---------------------------------------------------------------------------------------------
# Collectives


def test_collective_device_follows_the_backend(monkeypatch):
    assert collectives.collective_device() == torch.device("cpu")
    # Under NCCL the helpers must place their tensors on this rank's GPU: init_distributed records it.
    monkeypatch.setattr(collectives, "_COLLECTIVE_DEVICE", torch.device("cuda", 3))
    assert collectives.collective_device() == torch.device("cuda", 3)


@pytest.mark.parametrize("visible, local_rank, local_world, expected", [
    (8, 5, 8, "cuda:5"),   # every process sees the node's 8 GPUs
    (1, 5, 8, "cuda:0"),   # srun --gpus-per-task=1: each task sees only its own GPU
    (2, 3, 2, "cuda:1"),   # more devices than ranks' span: LOCAL_RANK % count
    (4, 0, 4, "cuda:0"),
])
def test_cuda_device_comes_from_the_visible_devices(monkeypatch, visible, local_rank, local_world, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert distributed.resolve_device("cuda", local_rank, local_world) == torch.device(expected)
    assert distributed.resolve_device("auto", local_rank, local_world) == torch.device(expected)


@pytest.mark.parametrize("device, visible, local_world, words", [
    ("cuda", 4, 8, ["LOCAL_WORLD_SIZE=8", "4 visible CUDA devices", "--nproc_per_node=4"]),
    ("cuda:3", 2, 1, ["'cuda:3'", "only 2 CUDA devices", "cuda:0 to cuda:1"]),
])
def test_a_device_count_that_does_not_fit_is_refused(monkeypatch, device, visible, local_world, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(visible))))
    with pytest.raises(distributed.DeviceError) as err:
        distributed.resolve_device(device, 1, local_world)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ---------------------------------------------------------------------------------------------
# The training loop


def _flat_schedule(lr=1e-3):
    return LRSchedule(base_lr=lr, warmup_lr=lr, min_lr=lr, warmup_epochs=0, epochs=10, steps_per_epoch=10)


def _trainer(model, *, accum=1, log_interval=100, optimizer=None, amp="none"):
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    return Trainer(model, optimizer=optimizer, schedule=_flat_schedule(), loss_fn=SoftTargetLoss(3),
                   device=torch.device("cpu"), scaler=torch.amp.GradScaler("cpu", enabled=amp == "fp16"),
                   amp=amp, accum_steps=accum, log_interval=log_interval)


def _epoch(model, batches, *, accum=1, log_interval=100, num_batches=None, optimizer=None, amp="none", **kwargs):
    trainer = _trainer(model, accum=accum, log_interval=log_interval, optimizer=optimizer, amp=amp)
    trainer.train_epoch(batches, (num_batches or len(batches)) // accum, **kwargs)
    return trainer.state


def _tiny_model():
    torch.manual_seed(0)
    return timm.create_model("t2t_vit_t_14", img_size=32, num_classes=3, depth=1)


def _batches(n, size=2):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("amp,optimizer", [("none", None), ("fp16", "adamw")])
def test_no_host_sync_between_log_steps(monkeypatch, amp, optimizer):
    """The host reads device values only at log steps: on a GPU each read would drain the queue.

    Under fp16 the GradScaler's inf check stays on the device too: AdamW is built fused, as on CUDA,
    so the scaler hands it the check instead of reading it back to skip a step."""
    from t2t.config import OptimConfig
    from t2t.engine.optim import build_optimizer
    model = _tiny_model()
    if optimizer is not None:
        optimizer = build_optimizer(model, OptimConfig(name=optimizer, momentum=0.9), 1e-3, fused=True)
    batches = _batches(6)
    reads, current = [], [None]

    def stream():
        for i, batch in enumerate(batches):
            current[0] = i
            yield batch

    for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
        def spy(self, *args, _real=getattr(torch.Tensor, name)):
            reads.append(current[0])
            return _real(self, *args)
        monkeypatch.setattr(torch.Tensor, name, spy)
    state = _epoch(model, stream(), log_interval=3, num_batches=6, optimizer=optimizer, amp=amp)
    monkeypatch.undo()
    assert state.global_step == 6
    assert reads and set(reads) <= {2, 5}, reads  # the log steps 3 and 6 (micro-batches 2 and 5)


def test_leftover_micro_batches_are_not_backpropagated():
    """5 micro-batches with accumulation 2: two steps; the fifth never leaks into the next epoch's first step."""
    drawn = []
    batches = _batches(5)

    def stream():
        for i, b in enumerate(batches):
            drawn.append(i)
            yield b

    model = _tiny_model()
    state = _epoch(model, stream(), accum=2, num_batches=5)
    assert state.global_step == 2 and drawn == [0, 1, 2, 3]
    assert all(p.grad is None for p in model.parameters())


def test_a_nan_found_before_a_save_stops_the_run():
    model = _tiny_model()
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    trainer = _trainer(model, log_interval=100)
    saves = []

    def save():  # what the run's checkpointer does: the Trainer's state first, then the write
        trainer.state_dict()
        saves.append(trainer.state.global_step)

    with pytest.raises(NonFiniteLossError, match="optimizer step 0"):
        trainer.train_epoch(_batches(3), 3, stop=StopPolicy(steps_per_epoch=3, every_steps=1), save=save)
    assert saves == []


# ---------------------------------------------------------------------------------------------
# Launches


# ---------------------------------------------------------------------------------------------
# Run folders and checkpoints


def _tree(folder):
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_resume_choice_in_run_folders(tmp_path, caplog):
    from t2t.engine.checkpoint import CheckpointWriter
    from t2t.engine.run_folder import RunError
    from t2t.engine.run_folder import choose_resume as _choose_resume

    # A run that stopped before its first checkpoint: --resume auto starts it, and says so; the
    # temporary file of a killed save is removed.
    never_saved = tmp_path / "never-saved"
    never_saved.mkdir()
    (never_saved / "config.yaml").write_text("model: {name: t2t_vit_7}\n")
    (never_saved / ".tmp-abc123.pth").write_bytes(b"half a checkpoint")
    assert _choose_resume(str(never_saved), "auto") is None
    assert not (never_saved / ".tmp-abc123.pth").exists()
    assert "never saved a checkpoint: starting it from the beginning" in caplog.text
    with pytest.raises(RunError, match="already holds a run"):
        _choose_resume(str(never_saved), None)

    # --resume with a checkpoint of another run into a folder that holds a run: refused, folder unchanged.
    other, existing = tmp_path / "other", tmp_path / "existing"
    for folder, step in ((other, 5), (existing, 9)):
        folder.mkdir()
        save_fake(CheckpointWriter(str(folder)), step, 0, end_of_epoch=True, is_best=True)
        (folder / "config.yaml").write_text(f"# run {step}\n")
    before = _tree(existing)
    with pytest.raises(RunError, match="holds another run"):
        _choose_resume(str(existing), str(other / "last.pth"))
    assert _tree(existing) == before
    # ...but into its own folder, or an empty one, it goes ahead.
    assert _choose_resume(str(other), str(other / "last.pth")) == str(other / "last.pth")
    assert _choose_resume(str(tmp_path / "fresh"), str(other / "last.pth")) == str(other / "last.pth")

    # Every checkpoint damaged: not started over them.
    (existing / "last.pth").write_bytes(b"")
    (existing / "best.pth").unlink()
    with pytest.raises(RunError, match="can be loaded"):
        _choose_resume(str(existing), "auto")


def test_model_and_ema_are_evaluated_on_one_pass(monkeypatch):
    from t2t.engine.evaluate import evaluate, evaluate_models

    torch.manual_seed(0)
    a = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    b = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    batches = _batches(3, size=5)
    reads = []

    def loader():
        for i, batch in enumerate(batches):
            reads.append(i)
            yield batch

    both = evaluate_models({"": a, "ema_": b}, loader(), device=torch.device("cpu"))
    assert reads == [0, 1, 2]  # the validation set is decoded once for both
    for name, model in (("", a), ("ema_", b)):
        alone = evaluate(model, batches, device=torch.device("cpu"))
        assert both[name]["top1"] == alone["top1"] and both[name]["count"] == 15
        assert both[name]["loss"] == pytest.approx(alone["loss"], rel=1e-12)
    assert both[""]["loss"] != both["ema_"]["loss"]


def test_uint8_batches_normalised_on_the_device(data_dir):
    """The CUDA path: workers send uint8 images; BatchNormalizeErase makes the float batch on the device."""
    from t2t.config import load_config
    from t2t.data import setup as data_setup

    cfg = load_config(None, ["data.workers=0", "data.auto_augment=null", "data.reprob=0.0", "data.color_jitter=0.0",
                             "data.hflip=0.0", "data.scale=[1.0,1.0]", "data.ratio=[1.0,1.0]", "model.img_size=32",
                             "train.seed=0", "train.batch_size=4", "eval.batch_size=8"])
    kwargs = dict(global_batch_size=4, eval_crop_pct=0.9, eval_interpolation="bicubic")
    as_uint8 = data_setup.build_train_and_val(
        data_setup.DataSpec.from_config(cfg, normalize_on_device=True, **kwargs), data_dir)
    as_float = data_setup.build_train_and_val(
        data_setup.DataSpec.from_config(cfg, normalize_on_device=False, **kwargs), data_dir)
    assert as_float.feed.train_images is None
    raw, _ = next(iter(as_uint8.train_batches(0)))
    ref, _ = next(iter(as_float.train_batches(0)))
    assert raw.dtype == torch.uint8 and ref.dtype == torch.float32
    torch.testing.assert_close(as_uint8.feed.train_images(raw), ref, rtol=0, atol=1e-5)
    assert raw.element_size() * raw.nelement() * 4 == ref.element_size() * ref.nelement()
    # Validation batches too: uint8 from the workers, the same float batch once normalised on the device.
    assert as_float.feed.eval_images is None
    val_raw, val_targets = next(iter(as_uint8.val_loader))
    val_ref, ref_targets = next(iter(as_float.val_loader))
    assert val_raw.dtype == torch.uint8 and torch.equal(val_targets, ref_targets)
    assert torch.equal(as_uint8.feed.eval_images(val_raw), val_ref)
