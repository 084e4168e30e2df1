"""Files the tools write: never an input, replaced only with --overwrite, complete or absent (t2t/outputs.py).

The rule is tested once for the helper and once per tool (predict, export, validate, benchmark, train),
with the bad inputs of each tool that must give one line and exit status 2.
"""
import hashlib
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from t2t.outputs import OutputError, atomic_output, check_output_file, same_file
from test_predict import make_images, save_run_checkpoint
from train_helpers import (CIFAR10, CIFAR_CONFIG, ROOT, TINY_CONFIG, load_script, make_cifar, make_data,
                           read_fifo_in_background, write_config)

sys.path.insert(0, ROOT)
import predict  # noqa: E402
import train  # noqa: E402
import validate  # noqa: E402

benchmark = load_script("benchmark")
export = load_script("export")
model_info = load_script("model_info")
plot_runs = load_script("plot_runs")


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def no_temporaries(folder) -> bool:
    return not [n for n in os.listdir(folder) if n.startswith(".tmp-")]


def one_line_error(capsys, tool: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"{tool}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "best.pth")
    save_run_checkpoint(path)
    return path


@pytest.fixture
def own_checkpoint(checkpoint, tmp_path):
    """A copy of the checkpoint that a test may try (and must fail) to overwrite."""
    path = tmp_path / "run" / "copy.pth"
    path.parent.mkdir()
    path.write_bytes(open(checkpoint, "rb").read())
    return str(path)


# ---------------------------------------------------------------------------------------------
# The helper


def test_same_file_sees_hard_links_and_symlinks(tmp_path):
    a = tmp_path / "a.pth"
    a.write_bytes(b"weights")
    os.link(a, tmp_path / "hard.pth")
    os.symlink(a, tmp_path / "soft.pth")
    assert same_file(str(tmp_path / "hard.pth"), str(a)) and same_file(str(tmp_path / "soft.pth"), str(a))
    assert same_file(str(tmp_path / "sub" / ".." / "a.pth"), str(a))
    assert not same_file(str(tmp_path / "new.csv"), str(a))


def test_check_output_file_refusals(tmp_path):
    a = tmp_path / "a.pth"
    a.write_bytes(b"weights")
    os.link(a, tmp_path / "hard.pth")
    with pytest.raises(OutputError, match="same file as --checkpoint"):
        check_output_file(str(tmp_path / "hard.pth"), inputs=[("--checkpoint", str(a))], overwrite=True)
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        check_output_file(str(a))
    check_output_file(str(a), overwrite=True)
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(str(tmp_path))
    with pytest.raises(OutputError, match="does not exist; create the folder first"):
        check_output_file(str(tmp_path / "missing" / "x.json"))
    check_output_file(str(tmp_path / "new.json"))
    assert sorted(os.listdir(tmp_path)) == ["a.pth", "hard.pth"]  # a check creates nothing


@pytest.mark.parametrize("error", [RuntimeError("exporter failed"), KeyboardInterrupt()])
def test_atomic_output_keeps_the_old_file_on_failure_or_ctrl_c(tmp_path, error):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(type(error)):
        with atomic_output(str(path)) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith("model.onnx")
            open(tmp, "wb").write(b"half of a new")
            raise error
    assert path.read_bytes() == b"previous export" and no_temporaries(tmp_path)
    with atomic_output(str(path)) as tmp:
        open(tmp, "wb").write(b"new export")
    assert path.read_bytes() == b"new export" and no_temporaries(tmp_path)


# ---------------------------------------------------------------------------------------------
# predict.py


def test_predict_never_overwrites_its_inputs(own_checkpoint, tmp_path, capsys):
    images = make_images(str(tmp_path / "imgs"), n=2)
    before = digest(own_checkpoint), digest(images[0])
    os.symlink(own_checkpoint, tmp_path / "link.pth")
    for output in (own_checkpoint, str(tmp_path / "link.pth"), images[0]):
        code = predict.main(["--checkpoint", own_checkpoint, "--images", *images, "--workers", "0",
                             "--output", output, "--overwrite"])
        assert code == 2 and "same file as" in one_line_error(capsys, "predict.py")
    assert (digest(own_checkpoint), digest(images[0])) == before


def test_predict_replaces_only_with_overwrite_and_ctrl_c_keeps_the_old_file(own_checkpoint, tmp_path, capsys,
                                                                           monkeypatch):
    images = make_images(str(tmp_path / "imgs"), n=2)
    out = tmp_path / "preds.csv"
    out.write_text("mine\n")
    args = ["--checkpoint", own_checkpoint, "--images", *images, "--workers", "0", "--output", str(out)]
    assert predict.main(args) == 2 and "--overwrite" in one_line_error(capsys, "predict.py")
    assert out.read_text() == "mine\n"

    def interrupted(rows, k, f):
        f.write("path,label_1\npartial")
        raise KeyboardInterrupt
    monkeypatch.setattr(predict, "_write_csv", interrupted)
    assert predict.main(args + ["--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err
    assert out.read_text() == "mine\n" and no_temporaries(tmp_path)
    monkeypatch.undo()
    assert predict.main(args + ["--overwrite"]) == 0
    assert out.read_text().startswith("path,label_1,prob_1") and len(out.read_text().splitlines()) == 3


def test_predict_refuses_a_timm_model_that_is_not_t2t(own_checkpoint, tmp_path, capsys):
    images = make_images(str(tmp_path / "imgs"), n=1)
    assert predict.main(["--checkpoint", own_checkpoint, "--images", *images, "--model", "resnet18"]) == 2
    assert "not a T2T-ViT" in one_line_error(capsys, "predict.py")


def test_sixteen_bit_png_gets_the_label_of_the_8_bit_picture(own_checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    Image.fromarray(gray8).save(tmp_path / "p8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "p16.png")  # the same picture in 16 bits
    assert Image.open(tmp_path / "p16.png").mode.startswith("I")
    from t2t.data.decode import to_rgb
    a = np.asarray(to_rgb(Image.open(tmp_path / "p8.png")))
    b = np.asarray(to_rgb(Image.open(tmp_path / "p16.png")))
    assert a.shape == b.shape == (40, 40, 3) and np.array_equal(a, b)
    out = tmp_path / "p.json"
    assert predict.main(["--checkpoint", own_checkpoint, "--images", str(tmp_path / "p8.png"),
                         str(tmp_path / "p16.png"), "--workers", "0", "--output", str(out)]) == 0
    p8, p16 = json.loads(out.read_text())
    assert [x["label"] for x in p8["predictions"]] == [x["label"] for x in p16["predictions"]]
    assert p8["predictions"][0]["prob"] == pytest.approx(p16["predictions"][0]["prob"], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# scripts/export.py


def test_export_never_overwrites_the_checkpoint(own_checkpoint, tmp_path, capsys):
    before = digest(own_checkpoint)
    os.link(own_checkpoint, tmp_path / "hard.pth")
    for fmt in ("torchscript", "safetensors"):
        for output in (own_checkpoint, str(tmp_path / "hard.pth")):
            code = export.main(["--checkpoint", own_checkpoint, "--format", fmt, "--output", output, "--overwrite"])
            assert code == 2 and "same file as --checkpoint" in one_line_error(capsys, "export.py")
    assert digest(own_checkpoint) == before


@pytest.mark.parametrize("failure", ["exporter", "ctrl-c", "parity"])
def test_export_failure_leaves_the_previous_file(own_checkpoint, tmp_path, capsys, monkeypatch, failure):
    out = tmp_path / "model.ts"
    out.write_bytes(b"previous export")

    def broken(model, example, path):
        open(path, "wb").write(b"partial")
        if failure == "exporter":
            raise RuntimeError("open file failed\nsecond line of the exporter's message")
        if failure == "ctrl-c":
            raise KeyboardInterrupt
        return lambda x: model(x) + 1.0  # an exporter that got the model wrong
    monkeypatch.setattr(export, "export_torchscript", broken)
    args = ["--checkpoint", own_checkpoint, "--format", "torchscript", "--output", str(out)]
    assert export.main(args) == 2 and "--overwrite" in one_line_error(capsys, "export.py")
    code = export.main(args + ["--overwrite"])
    assert code == {"exporter": 2, "ctrl-c": 130, "parity": 1}[failure]
    io = capsys.readouterr()
    assert "Traceback" not in io.err
    if failure == "exporter":
        assert len(io.err.strip().splitlines()) == 2 and "open file failed" in io.err  # the model line + the error
    if failure == "parity":
        assert "OVER --atol" in io.out and "previous file is untouched" in io.out
    assert out.read_bytes() == b"previous export" and no_temporaries(tmp_path)


def test_export_bad_paths_and_values_are_one_line_before_loading(own_checkpoint, tmp_path, capsys):
    cases = [
        (["--format", "onnx", "--output", str(tmp_path / "nowhere" / "m.onnx")], "nowhere"),
        (["--format", "onnx", "--output", str(tmp_path / "m.onnx"), "--opset", "7"], "--opset 7"),
        (["--format", "torchscript", "--output", str(tmp_path / "m.ts"), "--batch-size", str(10 ** 11)],
         "--batch-size 100000000000"),
        (["--format", "torchscript", "--output", str(tmp_path / "m.ts"), "--model", "resnet18"], "not a T2T-ViT"),
    ]
    for args, expected in cases:
        assert export.main(["--checkpoint", own_checkpoint, *args]) == 2
        assert expected in one_line_error(capsys, "export.py")
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_reexport_of_a_weights_only_safetensors(own_checkpoint, tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    state = torch.load(own_checkpoint, weights_only=True)["model"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(bare))  # no metadata: no model name
    out = tmp_path / "again.safetensors"
    code = export.main(["--checkpoint", str(bare), "--model", "t2t_vit_7", "--format", "safetensors",
                        "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    from t2t.inference import load_model
    assert load_model(str(out)).model_name == "t2t_vit_7"  # the name given is recorded for the next reader


def test_safetensors_metadata_that_is_not_json(own_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    state = torch.load(own_checkpoint, weights_only=True)["model"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad), metadata={"arch": "t2t_vit_7",
                                                                              "config": "{not json"})
    data = make_data(str(tmp_path / "data"), classes=3, train=1, val=1)
    code = validate.main(["--data-dir", data, "--checkpoint", str(bad), "-m", "t2t_vit_7", "--device", "cpu"])
    assert code == 2 and "'config' is not valid JSON" in one_line_error(capsys, "validate.py")


# ---------------------------------------------------------------------------------------------
# validate.py


def test_validate_results_file_rule(own_checkpoint, tmp_path, capsys, monkeypatch):
    data = make_data(str(tmp_path / "data"), classes=3, train=1, val=1)
    base = ["--data-dir", data, "--checkpoint", own_checkpoint, "-m", "t2t_vit_7", "--device", "cpu", "--workers", "0",
            "--allow-class-mismatch"]
    before = digest(own_checkpoint)
    assert validate.main(base + ["--results-file", own_checkpoint, "--overwrite"]) == 2
    assert "same file as --checkpoint" in one_line_error(capsys, "validate.py")
    assert digest(own_checkpoint) == before
    out = tmp_path / "results.json"
    out.write_text("{}\n")
    assert validate.main(base + ["--results-file", str(out)]) == 2
    assert "--overwrite" in one_line_error(capsys, "validate.py")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(validate, "run_suite", interrupted)
    assert validate.main(base + ["--results-file", str(out), "--overwrite"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.undo()
    assert out.read_text() == "{}\n" and no_temporaries(tmp_path)
    assert validate.main(base + ["--results-file", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["count"] == 3


def test_validate_bad_inputs_are_one_line(own_checkpoint, tmp_path, capsys):
    data = make_data(str(tmp_path / "data"), classes=3, train=1, val=1)
    base = ["--data-dir", data, "--checkpoint", own_checkpoint, "-m", "t2t_vit_7", "--device", "cpu", "--workers", "0",
            "--allow-class-mismatch"]
    assert validate.main(base + ["-m", "resnet18"]) == 2  # the last -m counts
    assert "not a T2T-ViT" in one_line_error(capsys, "validate.py")
    big = os.path.join(data, "val", sorted(os.listdir(os.path.join(data, "val")))[0])
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(os.path.join(big, "zz.png"))
    open(os.path.join(big, "zzz.jpg"), "wb").write(b"not an image")
    assert validate.main(base) == 2
    line = one_line_error(capsys, "validate.py")
    assert "zzz.jpg" in line and "skip_bad_images" not in line  # validate.py has no such setting


def test_validate_and_train_refuse_an_empty_cifar_test_split(tmp_path, capsys):
    folder = make_cifar(str(tmp_path))
    with open(os.path.join(folder, CIFAR10.test_files[0]), "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f, protocol=4)
    ckpt = str(tmp_path / "c.pth")
    save_run_checkpoint(ckpt)
    assert validate.main(["--data-dir", folder, "--checkpoint", ckpt, "-m", "t2t_vit_7", "--device", "cpu"]) == 2
    assert "test split" in one_line_error(capsys, "validate.py")
    config = write_config(str(tmp_path), CIFAR_CONFIG)
    assert train.main(["-c", config, "--data-dir", folder, "--output", str(tmp_path / "run")]) == 2
    assert "test split" in one_line_error(capsys, "train.py")
    assert not os.path.exists(tmp_path / "run" / "last.pth")


# ---------------------------------------------------------------------------------------------
# scripts/benchmark.py and scripts/model_info.py


def test_benchmark_checks_json_before_the_run(tmp_path, capsys):
    existing = tmp_path / "old.json"
    existing.write_text("{}\n")
    cases = [
        (["--json", str(tmp_path / "missing" / "b.json")], "missing"),
        (["--json", str(existing)], "--overwrite"),
        (["-m", "t2t_vit_99"], "unknown model"),
        (["-m", "resnet18"], "not a T2T-ViT"),
        (["--img-size", "30"], "--img-size 30"),
        (["--threads", "-1"], "--threads -1"),
        (["--rounds", "0"], "--rounds 0"),
        (["--batch-size", str(10 ** 11)], "--batch-size 100000000000"),
        (["--mode", "data", "--data-dir", str(tmp_path / "none")], "no such folder"),
        (["--mode", "data", "--data-dir", str(tmp_path)], "no class folders"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "cuda"))
    for args, expected in cases:
        start = time.perf_counter()
        with pytest.raises(SystemExit) as stop:
            sys.exit(benchmark.main(["-m", "t2t_vit_7", "--smoke", *args]))
        assert stop.value.code == 2, args
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and expected in err, (args, err)
        assert time.perf_counter() - start < 5, args  # refused before any timing
    assert sorted(os.listdir(tmp_path)) == ["old.json"] and existing.read_text() == "{}\n"


def test_benchmark_json_written_atomically_with_overwrite(tmp_path, capsys):
    out = tmp_path / "b.json"
    out.write_text("{}\n")
    assert benchmark.main(["-m", "t2t_vit_7", "--smoke", "--device", "cpu", "--json", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["model"] == "t2t_vit_7" and no_temporaries(tmp_path)


@pytest.mark.parametrize("size", ["30", "0", "-16"])
def test_model_info_img_size_is_one_line(capsys, size):
    with pytest.raises(SystemExit) as stop:
        model_info.main(["t2t_vit_7", "--img-size", size])
    assert stop.value.code == 2 and f"--img-size {size}" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# train.py's run folder


def test_train_run_folder_never_holds_an_input(checkpoint, tmp_path, capsys):
    data = make_data(str(tmp_path / "data"), classes=3, train=1, val=1)
    config = write_config(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    weights = run / "best.pth"
    weights.write_bytes(open(checkpoint, "rb").read())
    before = digest(weights)
    cases = [
        (["--output", data], "is the --data-dir"),
        (["--output", os.path.join(data, "train", "runs")], "lies inside --data-dir"),
        (["--output", str(run), f"model.init_from={weights}"], "best.pth"),
    ]
    for args, expected in cases:
        assert train.main(["-c", config, "--data-dir", data, *args]) == 2
        assert expected in one_line_error(capsys, "train.py")
    recipe = run / "config.yaml"
    recipe.write_text(TINY_CONFIG)
    assert train.main(["-c", str(recipe), "--data-dir", data, "--output", str(run)]) == 2
    assert "config.yaml" in one_line_error(capsys, "train.py")
    assert digest(weights) == before and recipe.read_text() == TINY_CONFIG
    assert sorted(os.listdir(run)) == ["best.pth", "config.yaml"]
    assert not os.path.exists(os.path.join(data, "train", "runs"))


def test_pickled_code_is_named_and_never_advised_to_load(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo loaded",))
    path = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, path)
    images = make_images(str(tmp_path / "imgs"), n=1)
    assert predict.main(["--checkpoint", str(path), "--images", *images]) == 2
    line = one_line_error(capsys, "predict.py")
    assert "pickled Python objects or code" in line and "system" in line
    assert "weights_only" not in line and "will likely succeed" not in line


# ---------------------------------------------------------------------------------------------
# Real processes and signals


@pytest.mark.slow
def test_ctrl_c_in_predict_exits_130_without_a_traceback_or_a_partial_file(own_checkpoint, tmp_path):
    images = make_images(str(tmp_path / "imgs"), n=64)
    out = tmp_path / "preds.csv"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "predict.py"), "--checkpoint", own_checkpoint,
                             "--images", *images, "--batch-size", "1", "--workers", "1", "--output", str(out)],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    deadline = time.time() + 120
    seen = ""
    while "/64 images" not in seen and time.time() < deadline:  # the progress bar: predictions are under way
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    err = seen + proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    assert "Traceback" not in err and "interrupted" in err
    assert not out.exists() and no_temporaries(tmp_path)


def test_probe_fixes(own_checkpoint, tmp_path, capsys):
    """A folder given as --checkpoint is named as such; validate.py takes the model the checkpoint records."""
    images = make_images(str(tmp_path / "imgs"), n=1)
    assert predict.main(["--checkpoint", str(tmp_path / "imgs"), "--images", *images]) == 2
    assert "is a folder" in one_line_error(capsys, "predict.py")
    data = make_data(str(tmp_path / "data"), classes=3, train=1, val=1)
    out = tmp_path / "r.json"
    assert validate.main(["--data-dir", data, "--checkpoint", own_checkpoint, "--device", "cpu", "--workers", "0",
                          "--allow-class-mismatch", "--results-file", str(out)]) == 0
    assert json.loads(out.read_text())["model"] == "t2t_vit_7"
    with pytest.raises(SystemExit) as stop:
        model_info.main(["t2t_vit_7", "--img-size", "100000"])
    assert stop.value.code == 2 and "use a smaller --img-size" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# An output is a regular file or it is left alone, in every tool: a FIFO receives the output and stays a
# FIFO; a device that refuses the bytes (like /dev/full) is one line and stays a device.


def _stream_tools(own_checkpoint, tmp_path):
    images = make_images(str(tmp_path / "imgs"), n=2)
    data = make_data(str(tmp_path / "data"), classes=3, train=1, val=1)
    run = tmp_path / "curves_run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 1.0, "lr": 0.1, "val_top1": 5.0}) + "\n")
    return {
        "predict": (predict.main, "preds.csv", ["--checkpoint", own_checkpoint, "--images", *images,
                                                "--workers", "0", "--output"], b"path,label_1"),
        "validate": (validate.main, "r.json", ["--data-dir", data, "--checkpoint", own_checkpoint, "-m", "t2t_vit_7",
                                               "--device", "cpu", "--workers", "0", "--allow-class-mismatch",
                                               "--results-file"], b'{\n  "top1": '),
        "export": (export.main, "m.safetensors", ["--checkpoint", own_checkpoint, "--format", "safetensors",
                                                  "--output"], None),
        "benchmark": (benchmark.main, "b.json", ["-m", "t2t_vit_7", "--smoke", "--device", "cpu", "--json"], b"{"),
        "plot_runs": (plot_runs.main, "curves.png", [str(run), "--output"], b"\x89PNG"),
    }


@pytest.mark.parametrize("tool", ["predict", "validate", "export", "benchmark", "plot_runs"])
def test_an_output_that_is_a_stream_is_written_through(own_checkpoint, tmp_path, capsys, tool):
    main, name, args, starts = _stream_tools(own_checkpoint, tmp_path)[tool]
    fifo = str(tmp_path / name)
    os.mkfifo(fifo)
    received = read_fifo_in_background(fifo)
    assert main([*args, fifo]) == 0, capsys.readouterr().err
    data = received()
    assert data.startswith(starts) if starts else len(data) > 0, data[:80]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and no_temporaries(tmp_path)

    full = str(tmp_path / ("full-" + name))
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the device /dev/full is
    except PermissionError:
        return  # making a device node needs root
    assert main([*args, full, "--overwrite"]) != 0
    assert "No space left on device" in one_line_error(capsys, f"{tool}.py")
    assert stat.S_ISCHR(os.stat(full).st_mode) and no_temporaries(tmp_path)
