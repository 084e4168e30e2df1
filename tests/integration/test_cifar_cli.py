"""CIFAR folders through train.py and validate.py: one-line errors, exact resume inside an epoch, the test split."""
import os

import pytest

from t2t.data.cifar import CIFAR_LAYOUTS
from train_helpers import CIFAR_CONFIG, assert_same_run, load, make_cifar, run_train, write_config

CIFAR10, CIFAR100 = CIFAR_LAYOUTS


def test_bad_cifar_folder_is_one_line_from_train_py(tmp_path):
    folder = make_cifar(str(tmp_path))
    os.remove(os.path.join(folder, "data_batch_2"))
    proc = run_train("-c", write_config(str(tmp_path), CIFAR_CONFIG), "--data-dir", folder,
                     "--output", str(tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data_batch_2" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_resume_inside_an_epoch_is_exact_on_cifar_files(tmp_path):
    folder = make_cifar(str(tmp_path), per_file=8)  # 40 training images: 10 steps of 4 per epoch
    config = write_config(str(tmp_path), CIFAR_CONFIG)
    common = ["--data-dir", folder, "data.workers=2"]
    run_train("-c", config, "--output", str(tmp_path / "straight"), *common)
    run_train("-c", config, "--output", str(tmp_path / "resumed"), *common, "train.max_steps=13")
    assert load(str(tmp_path / "resumed" / "step-00000013.pth"))["train_state"]["step_in_epoch"] == 3
    run_train("-c", config, "--output", str(tmp_path / "resumed"), "--resume", "auto", *common)
    assert_same_run(str(tmp_path / "straight" / "last.pth"), str(tmp_path / "resumed" / "last.pth"))
    ckpt = load(str(tmp_path / "straight" / "last.pth"))
    assert ckpt["run"]["classes"] == ["class_0", "class_1", "class_2"] and ckpt["train_state"]["global_step"] == 30


def test_validate_py_reads_the_cifar_test_split(tmp_path, capsys):
    import json
    import sys

    from test_predict import save_run_checkpoint
    from train_helpers import ROOT
    from t2t import validate
    folder = make_cifar(str(tmp_path), per_file=5)
    ckpt = str(tmp_path / "best.pth")
    save_run_checkpoint(ckpt, classes=["class_0", "class_1", "class_2"])
    code = validate.main(["--data-dir", folder, "--checkpoint", ckpt, "-m", "t2t_vit_7", "--img-size", "32",
                          "--crop-pct", "1.0", "--workers", "0", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0, out.err
    results = json.loads(out.out.strip().splitlines()[-1])
    assert results["count"] == 5 and results["data_dir"] == folder
