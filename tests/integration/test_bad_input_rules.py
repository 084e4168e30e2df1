"""The rules every tool keeps under bad input (issue 33), one test per rule and tool that has the case.

2 inputs checked by names and ranges; 3 a resumable tool re-checks what it skips; 4 one decoder and one
naming in every tool; 5 every argument bounded; 6 every tool starts and stops the same way (one line,
its status, no temporary file left); 7 a setting that does nothing is refused or said.
"""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import t2t  # noqa: F401
import t2t.outputs
from t2t import predict, validate, visualize
from t2t.cli import EXIT_INTERRUPTED, EXIT_IO, EXIT_USAGE, exit_status
from t2t.config import ConfigError, load_config
from t2t.data.dataset import open_folder
from t2t.data.label_blocks import block_path, read_block, write_block
from t2t.data.token_label import LabelMapError, TokenLabelDataset, open_label_dir
from t2t.engine.run import RunError, _check_labels_on_resume, run
from t2t.engine.run_folder import choose_resume
from train_helpers import ROOT, load_script, make_data, write_config

labels_main = load_script("generate_token_labels").main

CLASSES = ["disc", "square", "triangle"]  # make_data's class folders, sorted


def _validate_main(argv):
    return validate.main(argv)


def _predict_main(argv):
    return predict.main(argv)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny data set, a teacher that names the data's classes, one that names them in another order, labels."""
    root = tmp_path_factory.mktemp("rules")
    data = make_data(str(root / "data"), classes=3, train=2, val=1, size=40)
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    for name, classes in (("teacher.pth", CLASSES), ("reordered.pth", CLASSES[::-1])):
        torch.save({"arch": "t2t_vit_7", "state_dict_ema": model.state_dict(), "run": {"classes": classes}},
                   root / name)
    labels = root / "labels"
    assert labels_main(_label_args(root, data, labels)) == 0
    return root, data, labels


def _label_args(root, data, out, teacher="teacher.pth", *extra):
    return ["--teacher", str(root / teacher), "--data-dir", data, "--output", str(out), "--topk", "2",
            "--img-size", "32", "--batch-size", "4", "--workers", "0", *extra]


def _one_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    assert all(n in err[-1] for n in needles), err[-1]
    return err[-1]


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _tiny_cfg(tmp_path, *overrides):
    return load_config(write_config(str(tmp_path)), ["train.epochs=1", "sched.cooldown_epochs=0", "train.max_steps=1",
                                                     *overrides])


# ---------------------------------------------------------------------------------------------
# Rule 2: inputs are checked by names, not counts


@pytest.mark.parametrize("tool", ["train.py (distillation)", "generate_token_labels.py"])
def test_rule2_teacher_naming_the_classes_in_another_order_is_refused(setup, tmp_path, capsys, tool):
    root, data, _ = setup
    if tool.startswith("train"):
        cfg = _tiny_cfg(tmp_path, f"distill.teacher={root / 'reordered.pth'}", "distill.type=hard")
        with pytest.raises(RunError) as e:
            run(cfg, data_dir=data, output=str(tmp_path / "run"))
        message = str(e.value)
        assert exit_status(e.value) == EXIT_USAGE and not os.path.exists(tmp_path / "run" / "last.pth")
    else:
        assert labels_main(_label_args(root, data, tmp_path / "out", "reordered.pth")) == EXIT_USAGE
        message = _one_line(capsys)
        assert not os.path.exists(tmp_path / "out")
    assert "reordered.pth" in message and "'triangle' in the teacher and 'disc' in the data" in message


def test_rule2_real_labels_outside_the_models_classes_are_refused(setup, tmp_path, capsys):
    root, data, _ = setup
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[0], [1], [7]]))  # three val images; class 7 of a 3-class model
    argv = ["--checkpoint", str(root / "teacher.pth"), "--data-dir", data, "--img-size", "32", "--workers", "0",
            "--real-labels", str(real)]
    assert _validate_main(argv) == EXIT_USAGE
    _one_line(capsys, "real.json", "entry 2 names class 7", "3 classes")


@pytest.mark.parametrize("teacher", ["a run folder", "a model name"])
def test_rule2_a_teacher_that_is_not_a_file_says_what_it_is(setup, tmp_path, capsys, teacher):
    root, data, _ = setup
    args = _label_args(root, data, tmp_path / "out")
    if teacher == "a run folder":
        run = tmp_path / "run"
        os.makedirs(run)
        for name in ("step-00000003.pth", "last.pth", "config.yaml"):
            (run / name).write_bytes(b"")
        args[1] = str(run)
        needles = [f"--teacher={str(run)!r} is a folder", "it holds last.pth, step-00000003.pth: name one"]
    else:
        args[1] = "t2t_vit_7"
        needles = ["--teacher='t2t_vit_7' is a model name and no such file exists", "--teacher-model"]
    assert labels_main(args) == EXIT_USAGE
    _one_line(capsys, *needles)
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Rule 3: a resumable tool re-checks what it skips


def test_rule3_generate_token_labels_rewrites_damaged_label_blocks(setup, tmp_path):
    root, data, labels = setup
    out = tmp_path / "labels"
    args = _label_args(root, data, out, "teacher.pth", "--block-size", "1")  # 6 images: 6 blocks
    assert labels_main(args) == 0
    good = {b: read_block(block_path(str(out), b), mmap=False) for b in range(6)}
    header, values, indices = good[2]
    write = dict(start=2, data_sha256=header["relpaths_sha256"], teacher=header["teacher"], num_classes=3)
    open(block_path(str(out), 0), "wb").close()  # 0 bytes
    with open(block_path(str(out), 1), "r+b") as f:
        f.truncate(100)  # cut short
    write_block(block_path(str(out), 2), values, indices + 5, block=2, **write)  # class indices outside the 3
    write_block(block_path(str(out), 3), values.astype(np.float32) * np.nan, good[3][2], block=3,
                **dict(write, start=3))  # NaN scores
    kept = {b: os.stat(block_path(str(out), b)).st_mtime_ns for b in (4, 5)}
    assert labels_main(args) == 0
    for b, (_, v, i) in good.items():
        _, v2, i2 = read_block(block_path(str(out), b), mmap=False)
        assert np.array_equal(v, v2) and np.array_equal(i, i2), b
    assert all(os.stat(block_path(str(out), b)).st_mtime_ns == t for b, t in kept.items())


def test_rule3_output_inside_the_images_through_a_symlink_is_refused(setup, tmp_path, capsys):
    root, data, _ = setup
    link = tmp_path / "labels-link"
    os.symlink(os.path.join(data, "train"), link)
    before = _files(os.path.join(data, "train"))
    assert labels_main(_label_args(root, data, link / "labels")) == EXIT_USAGE
    _one_line(capsys, "lies inside the images")
    assert _files(os.path.join(data, "train")) == before


# ---------------------------------------------------------------------------------------------
# Rule 4: one decoder, one preprocessing, one naming


def test_rule4_visualize_reads_a_16_bit_png_as_predict_does(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    ramp = (np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) * 40).astype(np.uint16)  # up to 63960: not < 256
    path = str(tmp_path / "deep.png")
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    seen = []
    import t2t.models.attention_maps as attention_maps
    capture = attention_maps.capture
    monkeypatch.setattr(attention_maps, "capture", lambda model, x, **kw: (seen.append(x), capture(model, x, **kw))[1])
    assert visualize.main(["--checkpoint", str(root / "teacher.pth"), "--images", path, "--output",
                           str(tmp_path / "vis"), "--what", "rollout"]) == 0
    from t2t.inference import load_model
    expected = predict.ImageFiles([path], load_model(str(root / "teacher.pth")).transform)[0][0]
    assert torch.equal(seen[0][0], expected)


def test_rule4_visualize_output_names_never_collide(setup, tmp_path):
    root, data, _ = setup
    src = os.path.join(data, "val")
    for folder, name, cls in (("a", "x.jpg", "disc"), ("b", "x.jpg", "square"), ("c", "x-2.jpg", "triangle")):
        os.makedirs(tmp_path / "img" / folder)
        first = sorted(os.listdir(os.path.join(src, cls)))[0]
        os.link(os.path.join(src, cls, first), tmp_path / "img" / folder / name)
    assert visualize.main(["--checkpoint", str(root / "teacher.pth"), "--images", str(tmp_path / "img"),
                           "--output", str(tmp_path / "vis"), "--what", "rollout"]) == 0
    pngs = [f for f in os.listdir(tmp_path / "vis") if f.endswith(".png")]
    assert len(pngs) == 3, pngs


def test_rule4_visualize_batch_with_dali_says_which_pipeline_it_draws(setup, tmp_path, caplog):
    _, data, _ = setup
    config = write_config(str(tmp_path))
    assert visualize.main(["--config", config, "--data-dir", data, "--output", str(tmp_path / "vis"), "--what",
                           "batch", "--set", "data.backend=dali", "data.auto_augment=null", "train.batch_size=2",
                           "mixup.mixup_alpha=0", "mixup.cutmix_alpha=0"]) == 0
    assert "data.backend=dali" in caplog.text and "Pillow" in caplog.text


# ---------------------------------------------------------------------------------------------
# Rule 5: every argument is bounded


@pytest.mark.parametrize("tool", ["validate.py", "generate_token_labels.py"])
def test_rule5_a_huge_batch_size_is_one_line(setup, tmp_path, capsys, tool):
    root, data, _ = setup
    huge = str(10 ** 20)
    if tool == "validate.py":
        status = _validate_main(["--checkpoint", str(root / "teacher.pth"), "--data-dir", data, "--img-size", "32",
                                 "--workers", "0", "--batch-size", huge])
    else:
        status = labels_main(_label_args(root, data, tmp_path / "out")[:-4] + ["--batch-size", huge])
    assert status == EXIT_USAGE
    _one_line(capsys, huge)


def test_rule5_validate_json_and_csv_on_one_file_is_one_line(setup, tmp_path, capsys):
    root, data, _ = setup
    argv = ["--checkpoint", str(root / "teacher.pth"), "--data-dir", data, "--img-size", "32", "--workers", "0",
            "--json", str(tmp_path / "rows"), "--csv", os.path.join(str(tmp_path), ".", "rows")]
    assert _validate_main(argv) == EXIT_USAGE
    _one_line(capsys, "--csv", "is also the file of --json", "each output needs its own file; choose another --csv")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("topk", ["0", "-3", "7"])
def test_rule5_predict_topk_is_bounded_by_one_and_said_above_the_classes(setup, tmp_path, capsys, topk):
    root, data, _ = setup
    out = tmp_path / "preds.json"
    status = _predict_main(["--checkpoint", str(root / "teacher.pth"), "--images", os.path.join(data, "val"),
                            "--img-size", "32", "--workers", "0", "--topk", topk, "--output", str(out)])
    if topk == "7":  # every class, ranked, and a line that says so
        assert status == 0
        assert f"--topk 7 is more than the 3 classes of {root / 'teacher.pth'}: 3 predictions per image" in \
            capsys.readouterr().err
        assert {len(row["predictions"]) for row in json.loads(out.read_text())} == {3}
    else:
        assert status == EXIT_USAGE
        _one_line(capsys, f"--topk {topk}: expected a number of predictions per image >= 1")
        assert not out.exists()


def test_rule5_visualize_channels_beyond_the_model_are_refused_before_drawing(setup, tmp_path, capsys):
    root, data, _ = setup
    t0 = time.perf_counter()
    assert visualize.main(["--checkpoint", str(root / "teacher.pth"), "--images", os.path.join(data, "val"),
                           "--output", str(tmp_path / "vis"), "--what", "features", "--channels", "100000"]) == 2
    _one_line(capsys, "--channels 100000", "256 channels")
    assert time.perf_counter() - t0 < 30 and not os.listdir(tmp_path / "vis")


# ---------------------------------------------------------------------------------------------
# Rule 6: every tool starts and stops the same way


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("tool", ["validate.py", "generate_token_labels.py"])
def test_rule6_device_cuda_without_a_gpu_is_one_line(setup, tmp_path, capsys, tool):
    root, data, _ = setup
    if tool == "validate.py":
        status = _validate_main(["--checkpoint", str(root / "teacher.pth"), "--data-dir", data, "--device", "cuda"])
    else:
        status = labels_main(_label_args(root, data, tmp_path / "out", "teacher.pth", "--device", "cuda"))
    assert status == EXIT_USAGE
    _one_line(capsys, "cuda")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("damage", ['{"sha256": "ab', "[1, 2]"])  # cut short; JSON, but not a record
@pytest.mark.parametrize("tool", ["generate_token_labels.py", "train.py (token_label.dir)"])
def test_rule6_a_damaged_labels_json_is_one_line(setup, tmp_path, capsys, tool, damage):
    root, data, labels = setup
    out = tmp_path / "labels"
    os.makedirs(out)
    (out / "labels.json").write_text(damage)
    if tool.startswith("generate"):
        assert labels_main(_label_args(root, data, out)) == EXIT_USAGE
        _one_line(capsys, "labels.json")
        assert (out / "labels.json").read_text() == damage  # left for the user to restore
    else:
        with pytest.raises(LabelMapError, match="labels.json"):
            open_label_dir(str(out), CLASSES, os.path.join(data, "train"), [])


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("tool", ["generate_token_labels.py", "validate.py --json", "train.py log.jsonl"])
def test_rule6_a_full_disk_names_the_file_and_leaves_no_temporary(setup, tmp_path, capsys, monkeypatch, tool):
    root, data, _ = setup
    out = tmp_path / "out"
    if tool.startswith("generate"):
        fsync = t2t.outputs._fsync_path

        def full(path, **kwargs):  # a label block is written, then the disk is full when it is flushed
            if path.endswith(".tlb"):
                _enospc()
            fsync(path, **kwargs)
        monkeypatch.setattr(t2t.outputs, "_fsync_path", full)
        assert labels_main(_label_args(root, data, out)) == EXIT_IO
        line = _one_line(capsys, "No space left on device", str(out), "block-000000.tlb")
        assert [f for f in _files(out) if f != "labels.json"] == [], _files(out)
    elif tool.startswith("validate"):
        os.makedirs(out)
        monkeypatch.setattr(t2t.outputs, "_fsync_path", _enospc)
        assert _validate_main(["--checkpoint", str(root / "teacher.pth"), "--data-dir", data, "--img-size", "32",
                               "--workers", "0", "--json", str(out / "r.json")]) == EXIT_IO
        line = _one_line(capsys, "No space left on device", "r.json")
        assert os.listdir(out) == []
    else:
        from t2t.engine.metrics import RunLogger
        os.makedirs(out)
        monkeypatch.setattr(t2t.outputs, "_fsync_path", _enospc)
        with pytest.raises(OSError) as e:
            RunLogger(str(out), tensorboard=False).write_epochs([{"epoch": 0, "train_loss": 1.0}])
        line = str(e.value)
        assert exit_status(e.value) == EXIT_IO and "log.jsonl" in line and os.listdir(out) == []
    assert "Traceback" not in line


def test_rule6_ctrl_c_as_label_workers_start_is_one_line(setup, tmp_path):
    root, data, _ = setup
    out = tmp_path / "labels"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "generate_token_labels.py"),
           *_label_args(root, data, out)[:-2], "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    err = ""
    for line in proc.stderr:  # the loader's workers start right after this line
        err += line
        if "images to label" in line:
            proc.send_signal(signal.SIGINT)
            break
    err += proc.stderr.read()
    assert proc.wait(timeout=120) == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "interrupted (Ctrl-C)" in err.strip().splitlines()[-1]
    assert not [f for f in _files(out) if ".tmp" in f]
    for f in _files(out):
        if f.endswith(".tlb"):
            read_block(str(out / f), mmap=False)  # every block there is whole


@pytest.mark.parametrize("tool", ["visualize.py", "predict.py", "generate_token_labels.py"])
def test_rule6_an_image_of_225_megapixels_is_named(setup, tmp_path, capsys, tool):
    root, data, _ = setup
    big_data = tmp_path / "data"
    os.makedirs(big_data / "train" / "disc")
    for cls in CLASSES[1:]:
        os.symlink(os.path.join(data, "train", cls), big_data / "train" / cls)
    big = big_data / "train" / "disc" / "big.png"
    Image.new("1", (15000, 15000)).save(big)  # 225 Mpx: a decompression bomb to Pillow, 30 KB on disk
    if tool == "visualize.py":
        status = visualize.main(["--checkpoint", str(root / "teacher.pth"), "--images", str(big), "--output",
                                 str(tmp_path / "vis"), "--what", "rollout"])
        assert status == EXIT_USAGE
    elif tool == "predict.py":
        assert _predict_main(["--checkpoint", str(root / "teacher.pth"), "--images", str(big)]) == 1  # skipped
    else:
        assert labels_main(_label_args(root, str(big_data), tmp_path / "out")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "big.png" in err and "Traceback" not in err


@pytest.mark.parametrize("tool", ["visualize.py", "predict.py"])
def test_rule6_a_timm_model_that_is_not_a_t2t_vit_is_one_line(setup, tmp_path, capsys, tool):
    root, data, _ = setup
    images = os.path.join(data, "val")
    if tool == "visualize.py":
        status = visualize.main(["--model", "resnet18", "--images", images, "--output", str(tmp_path / "v")])
    else:
        status = _predict_main(["--checkpoint", str(root / "teacher.pth"), "--model", "resnet18", "--images", images])
    assert status == EXIT_USAGE
    _one_line(capsys, "resnet18", "not a T2T-ViT")


# ---------------------------------------------------------------------------------------------
# Rule 7: a setting that does nothing is refused or said


def test_rule7_a_teacher_without_distillation_is_refused(setup, tmp_path):
    root, _, _ = setup
    with pytest.raises(ConfigError, match="distill.type=none"):
        _tiny_cfg(tmp_path, f"distill.teacher={root / 'teacher.pth'}")


def test_rule7_resuming_with_other_token_labels_is_refused():
    saved = {"dir": "/a/labels", "teacher": "/t/one.pth", "sha256": "1" * 64, "model": "t2t_vit_7", "topk": 5,
             "img_size": 224}
    _check_labels_on_resume("last.pth", saved, dict(saved, dir="/moved/labels"))  # the same labels, moved: runs
    for other in (dict(saved, dir="/b/labels", sha256="2" * 64), dict(saved, dir="/b/labels", topk=3), None):
        with pytest.raises(RunError, match="/a/labels"):
            _check_labels_on_resume("last.pth", saved, other)
    with pytest.raises(RunError, match="without token labels"):
        _check_labels_on_resume("last.pth", None, saved)


def test_rule7_a_folder_holding_only_a_teacher_is_not_a_run(setup, tmp_path, capsys):
    from train_helpers import fake_checkpoint
    folder = tmp_path / "run"
    os.makedirs(folder)
    torch.save(fake_checkpoint(step=5, epoch=1), folder / "teacher.pth")  # a training checkpoint of another run
    assert choose_resume(str(folder), "auto") is None  # a new run, not a resume from the teacher
    assert choose_resume(str(folder), None) is None  # and --output alone does not take it for a run
    torch.save(fake_checkpoint(step=5, epoch=1), folder / "last.pth")
    assert choose_resume(str(folder), "auto") == str(folder / "last.pth")


def test_rule7_nan_label_maps_name_the_block_and_image(setup, tmp_path):
    _, data, labels = setup
    out = tmp_path / "labels"
    import shutil
    shutil.copytree(labels, out)
    header, values, indices = read_block(block_path(str(out), 0), mmap=False)
    values = values.copy()
    values[4] = np.nan
    write_block(block_path(str(out), 0), values, indices, block=0, start=0, data_sha256=header["relpaths_sha256"],
                teacher=header["teacher"], num_classes=3)
    dataset = TokenLabelDataset(open_folder(os.path.join(data, "train")), label_dir=str(out))
    with pytest.raises(LabelMapError, match="NaN") as e:
        dataset.labels_at(4)
    assert f"{block_path(str(out), 0)}[4]" in str(e.value) and dataset.reader.path(4) in str(e.value)


def test_rule7_dali_names_the_file_it_cannot_decode(tmp_path):
    from t2t.data.dali import _bad_image_error, read_image
    path = str(tmp_path / "moving.jpg")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(path, format="GIF")  # a GIF under a .jpg name: Pillow reads it
    with pytest.raises(OSError, match="GIF") as e:
        read_image(path)
    assert path in str(_bad_image_error(type("D", (), {})(), path, e.value))
