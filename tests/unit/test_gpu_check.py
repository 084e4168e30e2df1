"""scripts/gpu_check.sh is checked here without a GPU: its syntax, and its Python parts on the CPU."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from t2t.tools import gpu_check
from train_helpers import ROOT, make_data


def test_the_script_parses():
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "gpu_check.sh")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_versions_and_the_step_loop_run_on_the_cpu():
    found = gpu_check.versions()
    assert found["torch"] == torch.__version__ and "dali" in found
    step = gpu_check.step_loop(torch.device("cpu"), launches=8, size=16)
    assert step().shape == (16, 16)


@pytest.mark.slow
def test_the_batch_buffer_check_runs_on_the_cpu(tmp_path, capsys):
    data = make_data(str(tmp_path / "data"), classes=2, train=8, val=2)
    code = gpu_check.main(["buffers", data, "--device", "cpu", "--batch-size", "4", "--workers", "2",
                           "--batches", "3"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and result == {"pil_batch_buffers_same_batches": True, "pil_batch_buffers_pinned": True,
                                    "batches": 3, "pil_batch_buffers_fallbacks": 0}
