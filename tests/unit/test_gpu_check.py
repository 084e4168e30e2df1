"""scripts/gpu_check.sh is checked here without a GPU: its syntax, and its Python parts on the CPU."""
from __future__ import annotations

import os
import subprocess

import torch

from t2t.tools import gpu_check
from train_helpers import ROOT


def test_the_script_parses():
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_versions_and_the_step_loop_run_on_the_cpu():
    found = gpu_check.versions()
    assert found["torch"] == torch.__version__ and "dali" in found
    step = gpu_check.step_loop(torch.device("cpu"), launches=8, size=16)
    assert step().shape == (16, 16)
