"""validate.py under torchrun (2 CPU processes, gloo) counts every image once: same result as 1 process."""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch

from test_validate import COUNTS, MODEL, ROOT, VALIDATE, make_image_folder
from train_helpers import free_port, torchrun_cmd


def validate_on_one_and_two_ranks(args, results_flag, tmp_path, single_timeout=600):
    """validate.py with `args` in one process, then under torchrun on two (gloo, one thread each); each writes its
    results through `results_flag` (one.json, two.json). Returns both files' contents and the two-rank run's stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, VALIDATE, *args, results_flag, str(tmp_path / "one.json")],
                            capture_output=True, text=True, timeout=single_timeout, cwd=ROOT, env=env)
    assert single.returncode == 0, single.stderr
    launcher = torchrun_cmd("--nproc_per_node=2", "--nnodes=1", f"--master_port={free_port()}", script="validate.py")
    multi = subprocess.run([*launcher, *args, results_flag, str(tmp_path / "two.json")],
                           capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert multi.returncode == 0, multi.stdout + multi.stderr
    one, two = (json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))
    return one, two, multi.stdout


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    make_image_folder(str(tmp_path / "val"))
    assert sum(COUNTS) % 2 == 1  # the second rank gets one image fewer; nothing may be padded
    torch.manual_seed(0)
    model = timm.create_model(MODEL, img_size=32, num_classes=len(COUNTS))
    torch.save({"state_dict_ema": model.state_dict()}, tmp_path / "ckpt.pth")
    # Batch 2 leaves a short last batch on both ranks (5 and 4 images).
    args = ["--data-dir", str(tmp_path), "-m", MODEL, "--checkpoint", str(tmp_path / "ckpt.pth"),
            "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    one, two, stdout = validate_on_one_and_two_ranks(args, "--results-file", tmp_path, single_timeout=300)
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert two["count"] == one["count"] == sum(COUNTS)
    assert two["top1"] == one["top1"]
    assert two["top5"] == one["top5"]
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert stdout.count('"top1"') == 1  # only rank 0 reports
