"""Training and evaluation on parquet files (the Hugging Face ImageNet layout): the folder's run bit for bit in
the global order, a block-order run over row groups, validate.py's numbers, the DALI backend."""
from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import timm
import torch

from t2t.config import load_config
from t2t.engine.checkpoint import find_resume_checkpoint
from t2t.engine.run import run
from parquet_helpers import write_parquet
from train_helpers import ROOT, assert_same_run, load, make_data, write_config

pytestmark = pytest.mark.slow
pytest.importorskip("pyarrow")

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
SHORT = ["train.epochs=1", "sched.cooldown_epochs=0", "sched.warmup_epochs=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(folder, parquet made from it as a Hugging Face download): 36 training images, 12 validation."""
    root = tmp_path_factory.mktemp("data")
    folder = make_data(str(root / "folder"))
    return folder, write_parquet(folder, str(root / "parquet"), rows_per_file=20, rows_per_group=5, hf_layout=True)


def _run(config: str, data_dir: str, output: str, *overrides: str) -> str:
    result = run(load_config(config, [*SHORT, "data.workers=1", *overrides]), data_dir=data_dir, output=output)
    return find_resume_checkpoint(result.output)[0]


def test_a_run_on_parquet_is_the_run_on_its_folder(data, tmp_path):
    folder, parquet = data
    config = write_config(str(tmp_path))
    a = _run(config, folder, str(tmp_path / "folder"))
    b = _run(config, parquet, str(tmp_path / "parquet"))
    assert_same_run(a, b)
    state = load(b)
    assert state["config"]["data"]["format"] == "auto" and "val_top1" in state["train_state"]["history"][0]


@pytest.mark.parametrize("backend", ["pil", "dali"])
def test_block_order_over_row_groups_runs_with_each_backend(data, tmp_path, backend):
    if backend == "dali" and not HAVE_DALI:
        pytest.skip('NVIDIA DALI is not installed (pip install -e ".[dali]")')
    _, parquet = data
    config = write_config(str(tmp_path))
    overrides = ["data.format=parquet", "data.shuffle=block", "data.block_shards=2", f"data.backend={backend}",
                 "train.max_steps=4"]
    a = _run(config, parquet, str(tmp_path / "a"), *overrides)
    b = _run(config, parquet, str(tmp_path / "b"), *overrides)
    assert_same_run(a, b)  # the block order is a pure function of (seed, epoch)
    assert load(a)["train_state"]["global_step"] == 4


def test_validate_reads_parquet_as_it_reads_the_folder(data, tmp_path, capsys):
    sys.path.insert(0, ROOT)
    import validate

    folder, parquet = data
    torch.save(timm.create_model("t2t_vit_7", img_size=32, num_classes=3).state_dict(), tmp_path / "m.pth")
    results = {}
    for name, data_dir in (("folder", folder), ("parquet", parquet)):
        out = tmp_path / f"{name}.json"
        code = validate.main(["--data-dir", data_dir, "-m", "t2t_vit_7", "--checkpoint", str(tmp_path / "m.pth"),
                              "--img-size", "32", "--batch-size", "4", "--workers", "1", "--device", "cpu",
                              "--results-file", str(out)])
        assert code == 0, capsys.readouterr().err
        with open(out) as f:
            results[name] = json.load(f)
    a, b = results["folder"], results["parquet"]
    assert a["count"] == b["count"] == 12
    assert (a["top1"], a["top5"], a["loss"]) == (b["top1"], b["top5"], b["loss"])
