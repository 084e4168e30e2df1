"""Training and evaluation on tar shards, end to end: the folder's run bit for bit, SIGKILL and exact resume,
2 ranks stopped mid-epoch then finished on 1, distillation, validate.py and the DALI backend."""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys

import pytest
import timm
import torch

from t2t.config import load_config
from t2t.data.shards import make_shards
from t2t.engine.checkpoint import find_resume_checkpoint
from t2t.engine.run import run
from train_helpers import ROOT, assert_same_run, kill_run_at, load, make_data, run_train, torchrun_cmd, write_config

pytestmark = pytest.mark.slow

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None

SHORT = ["train.epochs=1", "sched.cooldown_epochs=0", "sched.warmup_epochs=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder, shards made from it): 36 training images in 4 shards of 10 (the last one 6), 12 validation."""
    root = tmp_path_factory.mktemp("data")
    folder = make_data(str(root / "folder"))
    make_shards(folder, str(root / "shards"), shard_size=10)
    return folder, str(root / "shards")


def test_a_run_on_shards_is_the_run_on_their_folder(data, tmp_path):
    folder, shards = data
    config = write_config(str(tmp_path))
    run_train("-c", config, "--output", str(tmp_path / "folder"), "--data-dir", folder, "data.workers=1", *SHORT)
    run_train("-c", config, "--output", str(tmp_path / "shards"), "--data-dir", shards, "data.workers=1",
              "data.format=shards", *SHORT)
    assert_same_run(str(tmp_path / "folder" / "last.pth"), str(tmp_path / "shards" / "last.pth"))
    rows = load(str(tmp_path / "shards" / "last.pth"))["train_state"]["history"]
    assert len(rows) == 1 and "val_top1" in rows[0]  # evaluated on the validation shards


def test_sigkill_and_resume_on_shards_in_block_order_is_exact(data, tmp_path):
    _, shards = data
    config = write_config(str(tmp_path))
    common = ["--data-dir", shards, "data.workers=1", "data.shuffle=block", "data.block_shards=2",
              "checkpoint.every_steps=4"]
    run_train("-c", config, "--output", str(tmp_path / "straight"), *common)
    out = tmp_path / "killed"
    # killed inside epoch 1 (9 steps per epoch)
    assert kill_run_at("step-00000012.pth", str(out), "-c", config, "--output", str(out), *common) == -signal.SIGKILL
    run_train("-c", config, "--output", str(out), "--resume", "auto", *common)
    assert_same_run(str(tmp_path / "straight" / "last.pth"), str(out / "last.pth"))
    assert load(str(out / "last.pth"))["config"]["data"]["shuffle"] == "block"


def test_two_ranks_stopped_mid_epoch_finish_on_one_as_the_uninterrupted_run(data, tmp_path):
    """As test_cluster's folder test: same steps, lr and data position (weights differ by per-rank dropout)."""
    _, shards = data
    config = write_config(str(tmp_path))
    common = ["--data-dir", shards, "train.global_batch_size=8", "data.workers=0", "data.shuffle=block"]
    launcher = torchrun_cmd("--standalone", "--nproc_per_node=2")
    straight = subprocess.run([*launcher, "-c", config, "--output", str(tmp_path / "straight"), *common],
                              capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    out = tmp_path / "resized"
    first = subprocess.run([*launcher, "-c", config, "--output", str(out), *common, "train.max_steps=6"],
                           capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert first.returncode == 0, first.stdout + first.stderr
    stopped = load(str(out / "step-00000006.pth"))["train_state"]
    assert stopped["epoch"] == 1 and stopped["step_in_epoch"] == 2  # 36 // 8 = 4 steps per epoch
    run_train("-c", config, "--output", str(out), "--resume", "auto", *common)
    a, b = load(str(tmp_path / "straight" / "last.pth")), load(str(out / "last.pth"))
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] == 12 and b["run"]["world_size"] == 1
    assert [row["lr"] for row in a["train_state"]["history"]] == [row["lr"] for row in b["train_state"]["history"]]
    assert [row["epoch"] for row in b["train_state"]["history"]] == [0, 1, 2]


def test_distillation_on_shards_is_the_folders(data, tmp_path):
    folder, shards = data
    torch.manual_seed(1)
    teacher = str(tmp_path / "teacher.pth")
    torch.save({"arch": "t2t_vit_7", "state_dict_ema": timm.create_model("t2t_vit_7", img_size=32,
                                                                         num_classes=3).state_dict()}, teacher)
    overrides = SHORT + ["train.max_steps=4", f"distill.teacher={teacher}", "distill.type=hard", "distill.alpha=0.5"]
    results = [run(load_config(write_config(str(tmp_path)), overrides), data_dir=d, output=str(tmp_path / name))
               for name, d in (("folder", folder), ("shards", shards))]
    a, b = (find_resume_checkpoint(r.output)[0] for r in results)
    assert_same_run(a, b)
    assert load(b)["run"]["teacher"]["model"] == "t2t_vit_7"


def test_validate_reads_validation_shards(data, tmp_path, capsys):
    sys.path.insert(0, ROOT)
    import validate

    folder, shards = data
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    results = {}
    backends = ("pil", "dali") if HAVE_DALI else ("pil",)
    for name, data_dir in (("folder", folder), ("shards", shards)):
        for backend in backends:
            out = tmp_path / f"{name}-{backend}.json"
            code = validate.main(["--data-dir", data_dir, "-m", "t2t_vit_7", "--checkpoint", str(tmp_path / "m.pth"),
                                  "--img-size", "32", "--batch-size", "4", "--workers", "1", "--data-backend", backend,
                                  "--device", "cpu", "--results-file", str(out)])
            assert code == 0, capsys.readouterr().err
            with open(out) as f:
                results[name, backend] = json.load(f)
    for backend in backends:
        a, b = results["folder", backend], results["shards", backend]
        assert a["count"] == b["count"] == 12
        assert (a["top1"], a["top5"], a["loss"]) == (b["top1"], b["top5"], b["loss"])


@pytest.mark.skipif(not HAVE_DALI, reason='NVIDIA DALI is not installed (pip install -e ".[dali]")')
def test_dali_on_shards_is_dali_on_the_folder(data, tmp_path):
    folder, shards = data
    config = write_config(str(tmp_path))
    common = ["data.backend=dali", "data.workers=2", "train.max_steps=4", *SHORT]
    run_train("-c", config, "--output", str(tmp_path / "folder"), "--data-dir", folder, *common)
    run_train("-c", config, "--output", str(tmp_path / "shards"), "--data-dir", shards, *common)
    a, b = (find_resume_checkpoint(str(tmp_path / name))[0] for name in ("folder", "shards"))
    assert_same_run(a, b)
