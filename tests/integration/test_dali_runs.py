"""data.backend=dali end to end: SIGKILL and exact resume, two gloo processes, validate.py, the benchmark CLI."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess

import pytest
import torch

from zygote import run_script
from train_helpers import ROOT, assert_same_run, kill_run_at, load, make_colour_dataset, make_data, run_train, \
    shared_folder, straight_run, torchrun_cmd, write_config

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason='NVIDIA DALI is not installed (pip install -e ".[dali]")')


# ---------------------------------------------------------------------------------------------
# Config and a missing DALI: no DALI needed


# ---------------------------------------------------------------------------------------------
# The draws follow the Pillow backend's random streams


# ---------------------------------------------------------------------------------------------
# Pipelines (DALI's CPU operators)


# ---------------------------------------------------------------------------------------------
# Statistics against the Pillow backend


# ---------------------------------------------------------------------------------------------
# Training runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return shared_folder(tmp_path_factory, "make_data()", make_data)


@needs_dali
@pytest.mark.slow
def test_sigkill_and_resume_is_exact_with_dali(data_dir, tmp_path_factory, tmp_path):
    config = write_config(str(tmp_path))
    common = ["--data-dir", data_dir, "data.backend=dali", "data.workers=2", "checkpoint.every_steps=4"]
    run_train("-c", config, "--output", str(tmp_path / "straight"), *common)
    out = tmp_path / "killed"
    # killed inside epoch 1
    assert kill_run_at("step-00000012.pth", str(out), "-c", config, "--output", str(out), *common) == -signal.SIGKILL
    run_train("-c", config, "--output", str(out), "--resume", "auto", *common)
    assert_same_run(str(tmp_path / "straight" / "last.pth"), str(out / "last.pth"))
    # and the DALI run is not the Pillow run of the same settings (the backend really was used); that run is
    # test_train_cli's reference run
    pil = straight_run(tmp_path_factory, data_dir, "data.workers=2", "checkpoint.every_steps=4")
    assert not torch.equal(load(pil)["model"]["head.weight"],
                           load(str(out / "last.pth"))["model"]["head.weight"])


@needs_dali
@pytest.mark.slow
def test_two_processes_gloo_with_dali(data_dir, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = torchrun_cmd("--standalone", "--nproc_per_node=2") + [
        "-c", write_config(str(tmp_path)), "--data-dir", data_dir, "--output", out, "data.backend=dali",
        "data.workers=1", "train.epochs=1", "sched.cooldown_epochs=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = load(os.path.join(out, "last.pth"))
    assert ckpt["run"]["world_size"] == 2 and ckpt["config"]["data"]["backend"] == "dali"
    assert ckpt["train_state"]["global_step"] == 36 // 8  # 36 images, global batch 2 x 4
    row = ckpt["train_state"]["history"][-1]
    assert 0 <= row["val_top1"] <= 100 and row["val_top5"] == 100.0


# ---------------------------------------------------------------------------------------------
# Evaluation: the same images as the Pillow transform, up to resampling; validate.py --data-backend


@needs_dali
def test_validate_with_the_dali_backend(tmp_path, capsys):
    import timm
    from t2t import validate

    data_dir = make_colour_dataset(str(tmp_path / "data"))
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    results = {}
    for backend in ("pil", "dali"):
        out = tmp_path / f"{backend}.json"
        code = validate.main(["--data-dir", data_dir, "-m", "t2t_vit_7", "--checkpoint", str(tmp_path / "m.pth"),
                              "--img-size", "32", "--batch-size", "4", "--workers", "1", "--data-backend", backend,
                              "--device", "cpu", "--results-file", str(out)])
        assert code == 0, capsys.readouterr().err
        import json
        with open(out) as f:
            results[backend] = json.load(f)
    assert results["pil"]["count"] == results["dali"]["count"] == 9
    assert results["dali"]["loss"] == pytest.approx(results["pil"]["loss"], rel=0.02)


@pytest.mark.slow
def test_benchmark_cli_refuses_an_unknown_backend(tmp_path):
    proc = run_script([os.path.join(ROOT, "scripts", "benchmark.py"), "--mode", "data", "--data-dir", tmp_path,
                       "--data-backend", "pil,tf"], cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "--data-backend pil,tf: expected some of pil, dali, timm" in proc.stderr


