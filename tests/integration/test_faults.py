"""Bad input and faults in train.py: one line on stderr, a non-zero status, nothing already written changed.

Most cases fail before training starts, so train.main runs in this process; the few that must start
a run use a 3-class, 32-px T2T-ViT-7 for one or two steps.
"""
import errno
import hashlib
import os
import shutil
import stat
import sys

import pytest
import torch

from t2t.engine.checkpoint import CheckpointSaveError, atomic_save
from train_helpers import ROOT, make_data, run_train, torchrun_cmd, write_config
from t2t import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")))


@pytest.fixture
def config(tmp_path):
    return write_config(str(tmp_path))


def run_main(capsys, *args):
    """train.main in this process: (exit status, the one line it printed on stderr)."""
    status = train.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("t2t-train: error: "), err
    return status, lines[0]


def checksums(folder):
    """{relative path: sha256} of every file under `folder` but the log a failed start appends to, temporaries and
    the file-list caches."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            # The file-list caches are derived data, rebuilt from the data folder whenever they do not match it.
            if name == "train.log" or name.startswith(".tmp-") or name.startswith("filelist-"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def trained_run(data_dir, tmp_path_factory):
    """A run folder with a checkpoint after one optimizer step (the resume cases start from it)."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(str(folder))
    status = train.main(["-c", config, "--data-dir", data_dir, "--output", str(folder / "run"), "train.max_steps=1"])
    assert status == 0
    return folder / "run"


# ---------------------------------------------------------------------------------------------
# --resume files that are not training checkpoints


def _foreign_files(folder, good):
    """name -> path of files that must be refused as --resume: damaged, foreign and malicious."""
    data = good.read_bytes()
    files = {"zero-byte": b"", "truncated": data[: len(data) // 2], "text": b"hello\n"}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name}.pth"
        paths[name].write_bytes(content)
    weights = {"w": torch.ones(2)}
    torch.save({"state_dict": weights, "optimizer": {}, "epoch": 3}, folder / "timm.pth")  # timm's train.py
    torch.save({"model": weights, "optimizer": {}, "lr_scheduler": {}, "epoch": 3}, folder / "torchvision.pth")
    torch.save({"model": weights, "global_step": 1, "payload": shutil.rmtree}, folder / "malicious.pth")
    for name in ("timm", "torchvision", "malicious"):
        paths[name] = folder / f"{name}.pth"
    return paths


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "text", "timm", "torchvision", "malicious"])
@pytest.mark.parametrize("with_config", [True, False], ids=["with-config", "stored-config"])
def test_resume_file_that_is_not_a_training_checkpoint(capsys, data_dir, trained_run, tmp_path, config, kind,
                                                       with_config):
    path = _foreign_files(tmp_path, trained_run / "step-00000001.pth")[kind]
    before = checksums(tmp_path)
    args = ["-c", config] if with_config else []
    status, line = run_main(capsys, *args, "--data-dir", data_dir, "--resume", path)
    assert status == train.EXIT_USAGE and str(path) in line
    expected = {"zero-byte": "empty", "truncated": "truncated", "text": "not a torch checkpoint",
                "timm": "not a t2t training checkpoint", "torchvision": "not a t2t training checkpoint",
                "malicious": "could run code"}[kind]
    assert expected in line
    assert checksums(tmp_path) == before


@pytest.mark.parametrize("args,message", [
    (["--resume", "auto"], "--resume auto needs --output"),
    (["-c", "CONFIG", "--resume", "auto"], "--resume auto needs --output"),
    (["--resume", "auto", "--output", "MISSING"], "nothing to resume"),
    (["--resume", "MISSING"], "no such checkpoint file"),
    (["--resume", "FOLDER"], "use --resume auto --output"),
    (["--data-dir", "DATA"], "-c/--config is required"),
])
def test_resume_arguments_that_cannot_work(capsys, tmp_path, config, data_dir, args, message):
    names = {"CONFIG": config, "MISSING": str(tmp_path / "missing"), "FOLDER": str(tmp_path), "DATA": data_dir}
    status, line = run_main(capsys, *[names.get(a, a) for a in args])
    assert status == train.EXIT_USAGE and message in line


def test_resume_into_another_model_or_class_count(capsys, data_dir, trained_run, tmp_path):
    before = checksums(trained_run)
    status, line = run_main(capsys, "--resume", trained_run / "step-00000001.pth", "--data-dir", data_dir,
                            "model.name=t2t_vit_10")
    assert status == train.EXIT_USAGE and "do not fit" in line and "'t2t_vit_7' -> 't2t_vit_10'" in line
    four = make_data(str(tmp_path / "four"), classes=4, train=2, val=1)
    status, line = run_main(capsys, "--resume", trained_run / "step-00000001.pth", "--data-dir", four)
    assert status == train.EXIT_USAGE and "do not match the 3 classes" in line and "(4 here)" in line
    assert checksums(trained_run) == before


def test_resume_with_a_renamed_class_folder(capsys, data_dir, trained_run, tmp_path):
    renamed = tmp_path / "renamed"
    shutil.copytree(data_dir, renamed)
    first = sorted(os.listdir(renamed / "train"))[0]
    for split in ("train", "val"):
        os.rename(renamed / split / first, renamed / split / "zz_renamed")
    before = checksums(trained_run)
    status, line = run_main(capsys, "--resume", "auto", "--output", trained_run, "--data-dir", renamed)
    assert status == train.EXIT_USAGE and repr(first) in line and "'zz_renamed'" in line
    assert checksums(trained_run) == before


# ---------------------------------------------------------------------------------------------
# Config values, names and files


@pytest.mark.parametrize("override,named", [
    ("model.name=t2t_vit_99", "model.name='t2t_vit_99'"),
    ("model.name=../../x", "model.allow_any_timm_model"),
    ("model.name=hf-hub:someone/model", "expected a T2T-ViT model"),
    ("optim.betas=[0.9,1.0]", "optim.betas"),
    ("data.interpolation=cubic", "data.interpolation='cubic'"),
    ("eval.interpolation=random", "eval.interpolation='random'"),
    ("data.auto_augment=rand-x9", "data.auto_augment='rand-x9'"),
    ("train.seed=-1", "train.seed=-1"),
    ("optim.lr=.inf", "optim.lr=inf: expected a finite number"),
    ("optim.weight_decay=.nan", "optim.weight_decay=nan"),
    ("sched.min_lr=inf", "sched.min_lr=inf"),
    ("train.batch_size=3", "even batch size"),
])
def test_bad_config_values_fail_before_anything_runs(capsys, tmp_path, config, data_dir, override, named):
    out = tmp_path / "run"
    status, line = run_main(capsys, "-c", config, "--data-dir", data_dir, "--output", out, override)
    assert status == train.EXIT_USAGE and named in line
    assert not out.exists()


def test_unknown_model_is_allowed_only_when_asked(capsys, tmp_path, config, data_dir):
    allowed = ["model.allow_any_timm_model=true", "--print-config"]
    assert train.main(["-c", config, "model.name=vit_tiny_patch16_224", *allowed]) == 0
    assert "name: vit_tiny_patch16_224" in capsys.readouterr().out
    status, line = run_main(capsys, "-c", config, "model.name=no_such_net", *allowed)
    assert status == train.EXIT_USAGE and "not a model timm knows" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys, tmp_path, config, data_dir):
    out = tmp_path / "run"
    status, line = run_main(capsys, "-c", config, "--data-dir", data_dir, "--output", out, "train.device=cuda")
    assert status == train.EXIT_USAGE and "CUDA is not available" in line
    assert not out.exists()


def test_missing_init_from_file(capsys, tmp_path, config, data_dir):
    out = tmp_path / "run"
    status, line = run_main(capsys, "-c", config, "--data-dir", data_dir, "--output", out,
                            f"model.init_from={tmp_path / 'absent.pth'}")
    assert status == train.EXIT_USAGE and "absent.pth" in line and not out.exists()


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_output_that_is_a_file_or_under_one(capsys, tmp_path, config, data_dir, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = blocker if where == "file" else blocker / "run"
    status, line = run_main(capsys, "-c", config, "--data-dir", data_dir, "--output", out)
    assert status == train.EXIT_USAGE and str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "keep me"


@pytest.mark.parametrize("content,named", [
    ("model:\n  name: t2t_vit_7\n".encode("utf-16"), "not UTF-8"),
    (b"model: {name: t2t_vit_7}\nmodel_name: \xe9\n", "not UTF-8"),
    (b"", "is empty"),
    (b"# only a comment\n", "is empty"),
    (b"train:\n  epochs: 2\n  epochs: 3\n", "duplicate key 'epochs' in"),
    (b"train: {epochs: 2}\ntrain: {batch_size: 4}\n", "duplicate key 'train'"),
])
def test_config_files_that_cannot_be_used(capsys, tmp_path, data_dir, content, named):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    status, line = run_main(capsys, "-c", path, "--data-dir", data_dir, "--output", tmp_path / "run")
    assert status == train.EXIT_USAGE and named in line and str(path) in line


def test_overrides_anywhere_and_unknown_flags(capsys, config, data_dir):
    assert train.main(["-c", config, "train.epochs=7", "--data-dir", data_dir, "train.batch_size=6",
                       "--print-config", "optim.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "batch_size: 6" in out and "lr: 0.5" in out
    with pytest.raises(SystemExit) as exit_info:
        train.main(["-c", config, "--data-dri", data_dir, "train.epochs=1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "unrecognized arguments: --data-dri" in err


@pytest.mark.slow
def test_config_error_is_printed_once(tmp_path, config, data_dir):
    proc = run_train("-c", config, "--data-dir", data_dir, "--output", str(tmp_path / "run"), "optim.lr=.inf",
                     check=False)
    assert proc.returncode == train.EXIT_USAGE
    assert proc.stderr.strip().splitlines() == ["t2t-train: error: optim.lr=inf: expected a finite number"]


# ---------------------------------------------------------------------------------------------
# Faults once the run has started


@pytest.mark.parametrize("split", ["val", "train"])
def test_bad_image_with_loader_workers_is_one_line(capsys, data_dir, tmp_path, config, split):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    folder = data / split / sorted(os.listdir(data / split))[0]
    bad = sorted(folder.iterdir())
    for path in bad:  # a whole class, so that the first training batch meets one
        path.write_bytes(path.read_bytes()[:200])  # truncated JPEG: the header reads, the pixels do not
    out = tmp_path / "run"
    status, line = run_main(capsys, "-c", config, "--data-dir", data, "--output", out, "data.workers=2")
    assert status == train.EXIT_USAGE and ("cannot be read" in line or "cannot read" in line)
    assert any(repr(str(path)) in line for path in bad), line
    # A bad validation image is found before any training step; a bad training image at its first batch.
    assert not list(out.glob("*.pth"))


def test_full_disk_while_saving_keeps_the_previous_checkpoint(capsys, monkeypatch, data_dir, tmp_path, config):
    out = tmp_path / "run"
    real_save, calls, before = torch.save, [], {}

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            before.update(checksums(out))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
    status, line = run_main(capsys, "-c", config, "--data-dir", data_dir, "--output", out,
                            "checkpoint.every_steps=1", "train.max_steps=3")
    monkeypatch.undo()
    assert status == train.EXIT_IO and "No space left on device" in line and "intact" in line
    assert "step-00000002.pth" in line and "--resume auto" in line
    assert "step-00000001.pth" in before and checksums(out) == before
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert torch.load(out / "step-00000001.pth", weights_only=True)["train_state"]["global_step"] == 1


def test_atomic_save_reports_a_full_disk_and_honours_the_umask(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    old = os.umask(0o027)
    try:
        atomic_save({"global_step": 1}, str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    before = path.read_bytes()

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointSaveError, match="previous last.pth and the other checkpoints .* are intact") as e:
        atomic_save({"global_step": 2}, str(path))
    assert e.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pth"]


# ---------------------------------------------------------------------------------------------
# Deterministic failures under torchrun restarts (t2t/engine/failures.py)


def _torchrun_env(monkeypatch, attempt: int, run_id: str = "job-1") -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(attempt))
    monkeypatch.setenv("RANK", "0")


def test_a_recorded_failure_stops_only_restarts_of_the_same_job(monkeypatch, tmp_path):
    from t2t.engine import failures
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    assert failures.record_failure(str(tmp_path), "loss is nan", 3) is None  # no torchrun: no restart to stop
    _torchrun_env(monkeypatch, 0)
    assert failures.record_failure(str(tmp_path / "missing"), "x", 2) is None  # never creates the run folder
    path = failures.record_failure(str(tmp_path), "loss is nan at step 7", 3)
    assert path == str(tmp_path / failures.FAILURE_FILE)
    assert failures.failure_of_this_job(str(tmp_path)) is None  # attempt 0 is a start, not a restart
    _torchrun_env(monkeypatch, 1)
    recorded = failures.failure_of_this_job(str(tmp_path))
    assert (recorded.message, recorded.status, recorded.attempt) == ("loss is nan at step 7", 3, 0)
    _torchrun_env(monkeypatch, 1, run_id="job-2")  # a restart of another torchrun job: not its failure
    assert failures.failure_of_this_job(str(tmp_path)) is None
    assert failures.clear_failure(str(tmp_path)).status == 3  # a new start logs and removes it
    assert not os.path.exists(path)


def test_a_file_of_that_name_that_t2t_did_not_write_is_kept(monkeypatch, tmp_path):
    from t2t.engine import failures
    _torchrun_env(monkeypatch, 0)
    mine = tmp_path / failures.FAILURE_FILE
    mine.write_text('{"notes": "mine"}')
    assert failures.record_failure(str(tmp_path), "x", 2) is None
    _torchrun_env(monkeypatch, 1)
    assert failures.failure_of_this_job(str(tmp_path)) is None and failures.clear_failure(str(tmp_path)) is None
    assert mine.read_text() == '{"notes": "mine"}'


@pytest.mark.slow
def test_a_bad_image_is_not_replayed_by_torchrun_restarts(data_dir, tmp_path, config):
    """Under torchrun --max-restarts=2 the restarts exit at once with the first attempt's message and status;
    a new start by the user (here with skip_bad_images) removes the record and runs."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    folder = data / "train" / sorted(os.listdir(data / "train"))[0]
    bad = sorted(folder.iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "run"
    cmd = torchrun_cmd("--standalone", "--nproc_per_node=1", "--max-restarts=2") + [
        "-c", config, "--data-dir", str(data), "--output", str(out), "train.epochs=1", "sched.cooldown_epochs=0"]
    import subprocess
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("t2t-train: error: ")]
    assert proc.returncode != 0 and len(errors) == 3, proc.stderr[-4000:]
    first = errors[0][len("t2t-train: error: "):]
    assert repr(str(bad)) in first
    for line in errors[1:]:
        assert line.startswith("t2t-train: error: " + first) and "not replayed" in line, line
    log = (out / "train.log").read_text()
    assert log.count(repr(str(bad))) == 1, log  # only the first attempt ran and met the image
    assert (out / "failure.json").exists()
    run_train("-c", config, "--data-dir", str(data), "--output", str(out), "--resume", "auto",
              "data.skip_bad_images=true", "train.epochs=1", "sched.cooldown_epochs=0")
    assert not (out / "failure.json").exists()
