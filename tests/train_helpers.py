"""Shared pieces of the training tests: a tiny data set, a tiny config, checkpoint comparison."""
from __future__ import annotations

import importlib.util
import os
import hashlib
import pickle
import shutil
import socket
import subprocess
import threading
import sys

import numpy as np
import torch
from PIL import Image

from t2t.config import Config, ModelConfig
from t2t.data.cifar import CIFAR_LAYOUTS
from t2t.checkpoint_schema import TRAINER_KEYS, TrainingCheckpoint
from t2t.models.factory import create_model
from t2t.tools.demo_data import make_demo_dataset

import zygote

CIFAR10, CIFAR100 = CIFAR_LAYOUTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
    """The command-line tool scripts/<name>.py as a module, to call its main() in-process (not put on sys.path)."""
    spec = importlib.util.spec_from_file_location(f"t2t_script_{name}", os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_CONFIG = """\
model: {name: t2t_vit_7, img_size: 32, drop_path_rate: 0.1}
data: {workers: 0, reprob: 0.25, auto_augment: rand-m9-mstd0.5-inc1}
mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0}
train: {epochs: 2, batch_size: 4, log_interval: 2, device: cpu}
optim: {lr: 1.0e-3, lr_base_batch_size: 4}
sched: {warmup_epochs: 1, cooldown_epochs: 1}
eval: {batch_size: 8}
ema: {decay: 0.9}
log: {tensorboard: false}
"""


def make_data(root: str, classes: int = 3, train: int = 12, val: int = 4, size: int = 40) -> str:
    make_demo_dataset(root, classes=classes, train_per_class=train, val_per_class=val, size=size, seed=0)
    return root


def write_config(folder: str, text: str = TINY_CONFIG) -> str:
    path = os.path.join(folder, "tiny.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), *args]


def torchrun_cmd(*launcher_args: str, script: str = "train.py") -> list[str]:
    """torchrun (`python -m torch.distributed.run`, this interpreter) with `launcher_args`, then ROOT/`script`."""
    return [sys.executable, "-m", "torch.distributed.run", *launcher_args, os.path.join(ROOT, script)]


def free_port() -> int:
    """A TCP port free on localhost right now, for a rendezvous endpoint or MASTER_PORT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python train.py ARGS` from the repository root, as a fresh process runs it (forked from a process that
    has imported torch and timm already: tests/zygote.py)."""
    proc = zygote.run_script(train_cmd(*args)[1:], cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def shared_folder(tmp_path_factory, name: str, fill) -> str:
    """A folder `fill(folder)` filled once per test session, shared by the tests (and pytest-xdist workers)
    that ask for the same `name`: e.g. the data set or the uninterrupted reference run that several kill and
    resume tests compare against. The tests only read it."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' common folder
    folder = os.path.join(str(base), "shared", hashlib.sha256(name.encode()).hexdigest()[:16])
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        if not os.path.exists(os.path.join(folder, ".done")):
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder)
            fill(folder)
            open(os.path.join(folder, ".done"), "w").close()
    return folder


def straight_run(tmp_path_factory, data_dir: str, *args: str, config: str = TINY_CONFIG) -> str:
    """last.pth of an uninterrupted train.py run of `config` on `data_dir` with `args`, run once per session."""
    def fill(folder):
        run_train("-c", write_config(folder, config), "--output", os.path.join(folder, "run"),
                  "--data-dir", data_dir, *args)
    return os.path.join(shared_folder(tmp_path_factory, repr((data_dir, config, args)), fill), "run", "last.pth")


def load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def assert_same_optimizer(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]
    for idx, state in a["state"].items():
        for k, v in state.items():
            other = b["state"][idx][k]
            assert torch.equal(v, other) if isinstance(v, torch.Tensor) else v == other, f"optimizer {idx}.{k}"


def epoch_rows(ckpt: dict) -> list[dict]:
    """Per-epoch metrics without the wall-clock throughput."""
    return [{k: v for k, v in row.items() if k != "images_per_sec"} for row in ckpt["train_state"]["history"]]


def assert_same_run(a_path: str, b_path: str) -> None:
    a, b = load(a_path), load(b_path)
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"]
    assert a["train_state"]["epoch"] == b["train_state"]["epoch"]
    assert_same_tensors(a["model"], b["model"], "model")
    assert_same_tensors(a["state_dict_ema"], b["state_dict_ema"], "EMA")
    assert_same_optimizer(a["optimizer"], b["optimizer"])
    assert epoch_rows(a) == epoch_rows(b)


def fake_checkpoint(step: int, epoch: int) -> dict:
    """A minimal training checkpoint (the current format) at `step`, for tests of the files around it."""
    from t2t.checkpoint_schema import TrainingCheckpoint
    from t2t.engine.trainer import TrainState

    trainer = {"model": {}, "state_dict_ema": None, "optimizer": {}, "scaler": {},
               "train_state": TrainState(epoch=epoch, global_step=step).to_dict(), "rng": {"torch": None}}
    return TrainingCheckpoint(trainer=trainer, arch="t2t_vit_7", config={}, run=None, versions={}).to_dict()


def save_fake(writer, step: int, epoch: int, *, end_of_epoch: bool, is_best: bool) -> str:
    return writer.save(fake_checkpoint(step, epoch), epoch=epoch, step=step, end_of_epoch=end_of_epoch,
                       is_best=is_best)


def kill_run_at(marker: str, out: str, *args: str, sig: int = 9, timeout: float = 600) -> int:
    """Start train.py with `args` in its own session, send `sig` (SIGKILL) once `out`/`marker` exists; its exit code."""
    import signal as _signal
    import time

    proc = subprocess.Popen(train_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        deadline = time.time() + timeout
        while not os.path.exists(os.path.join(out, marker)):
            if proc.poll() is not None:
                raise AssertionError(f"train.py ended early ({proc.returncode}): {proc.stderr.read()}")
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting for {marker}")
            time.sleep(0.05)
        proc.send_signal(_signal.Signals(sig))
        return proc.wait(timeout=120)
    finally:
        proc.kill()


CIFAR_CONFIG = """\
model: {name: t2t_vit_7, img_size: 32, drop_path_rate: 0.1}
data: {workers: 0, train_transform: cifar, auto_augment: null, interpolation: bilinear, reprob: 0.25,
       mean: [0.4914, 0.4822, 0.4465], std: [0.2023, 0.1994, 0.2010]}
mixup: {mixup_alpha: 0.8, cutmix_alpha: 1.0}
train: {epochs: 2, batch_size: 4, log_interval: 2, device: cpu}
optim: {name: sgd, lr: 0.05, lr_base_batch_size: 4, weight_decay: 5.0e-4, backbone_lr_scale: 0.01}
sched: {warmup_epochs: 0, cooldown_epochs: 1, min_lr: 2.0e-4}
eval: {batch_size: 8, crop_pct: 1.0, interpolation: bilinear}
ema: {decay: 0.9}
log: {tensorboard: false}
"""


def dump_pickle(path: str, obj: dict) -> None:
    """Write `obj` as the CIFAR release files are written (pickle protocol 2)."""
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def make_cifar(root: str, layout=CIFAR10, *, classes: int = 3, per_file: int = 6, seed: int = 0) -> str:
    """A small CIFAR folder in the official layout: class-coloured 32 x 32 images with noise."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, layout.folder)
    os.makedirs(folder, exist_ok=True)
    names = [f"class_{i}".encode() for i in range(classes)]
    dump_pickle(os.path.join(folder, layout.meta_file), {layout.names_key: names, b"num_vis": 3072})
    for name in layout.train_files + layout.test_files:
        labels = [int(i % classes) for i in range(per_file)]
        base = np.array([[40 + 80 * t, 200 - 60 * t, 90] for t in labels], dtype=np.int16)  # (N, 3)
        planes = np.repeat(base, 1024, axis=1) + rng.integers(-30, 30, (per_file, 3072))
        batch = {b"batch_label": name.encode(), layout.labels_key: labels,
                 b"data": planes.clip(0, 255).astype(np.uint8), b"filenames": [b"x.png"] * per_file}
        if layout is CIFAR100:
            batch[b"coarse_labels"] = [0] * per_file
        dump_pickle(os.path.join(folder, name), batch)
    return folder


def token_label_checkpoint(tmp_path):
    """A training checkpoint of a tiny token-label model whose aux head decides: (model in eval mode, path)."""
    cfg = Config()
    cfg.model = ModelConfig(name="t2t_vit_7", img_size=32, token_label=True)
    torch.manual_seed(0)
    model = create_model(cfg.model, 3)
    with torch.no_grad():
        model.aux_head.weight.mul_(20)  # an aux head that decides: its part of the logits must show
    trainer = {k: {} for k in TRAINER_KEYS}
    trainer.update(model=model.state_dict(), state_dict_ema=None, train_state={"epoch": 1, "global_step": 1},
                   rng={"torch": torch.get_rng_state()})
    path = str(tmp_path / "tl.pth")
    torch.save(TrainingCheckpoint(trainer=trainer, arch="t2t_vit_7", config=cfg.to_dict(),
                                  run={"classes": ["a", "b", "c"]}, versions={}).to_dict(), path)
    return model.eval(), path


def make_colour_dataset(root, *, per_class=6, sizes=((40, 30), (30, 44), (64, 48))):
    """Classes that differ only in colour: red, green, blue images with noise, of several sizes and formats."""
    colours = {"a_red": (200, 30, 30), "b_green": (30, 200, 30), "c_blue": (30, 30, 200)}
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 3)):
        for name, colour in colours.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                pixels = np.clip(np.array(colour) + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)
                ext = "png" if i % 3 == 2 else "jpg"
                Image.fromarray(pixels).save(os.path.join(root, split, name, f"{i}.{ext}"))
    return root


def wandb_offline_runs(folder: str, timeout: float = 60) -> list[dict]:
    """The offline wandb runs under `folder`/wandb, oldest first: {"id", "branch_point" (run, step) or None,
    "steps": {step: {key: value}}}, read from their .wandb files (LevelDB-log framed protobuf records).

    wandb's service process writes the files after the run's process returns (or was killed): they are read
    once their sizes stay the same for a second."""
    import glob
    import time

    paths = sorted(glob.glob(os.path.join(folder, "wandb", "offline-run-*", "run-*.wandb")))
    deadline, sizes = time.time() + timeout, None
    while time.time() < deadline:
        now = [os.path.getsize(p) for p in paths]
        if now == sizes:
            break
        sizes = now
        time.sleep(1.0)
    return [_wandb_run_file(p) for p in paths]


def _wandb_run_file(path: str) -> dict:
    """One .wandb file: 32 KiB blocks of records, each a 7-byte header (crc, length, fragment kind) and bytes."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    pos, block, pending, run = 7, 32768, b"", {"id": None, "branch_point": None, "steps": {}}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # padding, or a record cut short by a kill
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # first / middle fragments of a record
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        if record.HasField("run"):
            run["id"] = record.run.run_id
            if record.run.branch_point.run:
                run["branch_point"] = (record.run.branch_point.run, int(record.run.branch_point.value))
        elif record.HasField("history"):
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            run["steps"][int(record.history.step.num)] = items
    return run


def read_fifo_in_background(path):
    """Start a reader of the FIFO at `path` (a writer blocks until one opens it); returns a callable that
    waits for the writer to close and gives what was written."""
    received = []
    thread = threading.Thread(target=lambda: received.append(open(path, "rb").read()), daemon=True)
    thread.start()

    def result():
        thread.join(timeout=60)
        assert not thread.is_alive(), "nothing was written to the FIFO"
        return received[0]
    return result
