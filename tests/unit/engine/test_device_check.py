"""device 'auto' on a machine with an NVIDIA GPU that torch cannot use: one line and exit status 2, not a
quiet CPU run. The GPU's presence is faked: the driver's /proc file moved to tmp_path, a fake nvidia-smi."""
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from t2t.engine import distributed
from t2t.engine.distributed import DeviceError, nvidia_driver_version, resolve_device
from train_helpers import ROOT

PROC_TEXT = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.57.02  Tue Jul 13 16:14:05 UTC 2021\n"
             "GCC version:  gcc version 9.3.0 (Ubuntu 9.3.0-17ubuntu1~20.04)\n")


def fake_nvidia_smi(folder, version: str = "535.104.05") -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "nvidia-smi")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\necho {version}\n")
    os.chmod(path, 0o755)
    return str(folder)


@pytest.fixture
def gpu_without_torch_cuda(tmp_path, monkeypatch):
    """An NVIDIA driver 470.57.02 (its /proc file) that this torch cannot use."""
    proc = tmp_path / "version"
    proc.write_text(PROC_TEXT)
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(proc))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def no_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_driver_version_from_the_proc_file(gpu_without_torch_cuda):
    assert nvidia_driver_version() == "470.57.02"


def test_driver_version_from_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(tmp_path / "absent"))
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin"))
    assert nvidia_driver_version() == "535.104.05"


def test_no_driver_means_the_cpu(no_gpu):
    assert nvidia_driver_version() is None
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_refuses_a_gpu_torch_cannot_use(gpu_without_torch_cuda):
    with pytest.raises(DeviceError) as error:
        resolve_device("auto")
    message = str(error.value)
    assert "\n" not in message and "driver 470.57.02" in message and torch.__version__ in message
    assert (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only") in message
    assert "pip install torch --index-url https://download.pytorch.org/whl/cu118" in message  # 470 runs CUDA 11.8
    assert "train.device=cpu" in message
    assert resolve_device("cpu") == torch.device("cpu")  # training on the CPU on purpose stays possible


def test_train_validate_predict_exit_2_in_one_line(gpu_without_torch_cuda, tmp_path, capsys):
    from t2t import predict, train, validate

    image = tmp_path / "a.jpg"
    Image.new("RGB", (8, 8)).save(image)
    codes = {
        "t2t-train": train.main(["-c", "demo", "--data-dir", str(tmp_path), "--output", str(tmp_path / "run"),
                                 "train.device=auto"]),
        "t2t-validate": validate.main(["--data-dir", str(tmp_path), "--checkpoint", str(tmp_path / "x.pth")]),
        "t2t-predict": predict.main(["--checkpoint", str(tmp_path / "x.pth"), "--images", str(image)]),
    }
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert codes == {"t2t-train": 2, "t2t-validate": 2, "t2t-predict": 2}
    for prog in codes:
        mine = [line for line in lines if line.startswith(f"{prog}: error: ")]
        assert len(mine) == 1 and "driver 470.57.02" in mine[0], lines


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available() or os.path.exists(distributed.NVIDIA_DRIVER_FILE),
                    reason="a real NVIDIA driver is present: gpu_check.sh would run the real check")
def test_gpu_check_fails_on_a_gpu_torch_cannot_use(tmp_path):
    env = {**os.environ, "PATH": fake_nvidia_smi(tmp_path / "bin", "470.57.02") + os.pathsep + os.environ["PATH"],
           "PYTHON": sys.executable, "PYTHONPATH": ROOT}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 2 and "driver 470.57.02" in proc.stderr, proc.stdout + proc.stderr
    without = {**env, "PATH": os.environ["PATH"]}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True, text=True,
                          timeout=300, env=without)
    assert proc.returncode == 0 and "nothing to check" in proc.stdout, proc.stdout + proc.stderr
