"""scripts/plot_runs.py (t2t.run_curves): curves from the files training writes, overlaid, deterministic, safe."""
import json
import math
import os

import pytest

from t2t.engine.metrics import RunLogger
from t2t.run_curves import main, plot_runs, read_history

pytest.importorskip("matplotlib")


def _history(epochs, lr0, with_ema=True, skip_eval=()):
    rows = []
    for e in range(epochs):
        row = {"epoch": e, "global_step": 10 * (e + 1), "train_loss": 2.0 / (e + 1) + lr0, "lr": lr0 * (1 - e / epochs)}
        if e not in skip_eval:
            row.update(val_loss=1.0, val_top1=10.0 * e + lr0, val_top5=90.0)
            if with_ema:
                row.update(ema_val_loss=1.1, ema_val_top1=9.0 * e, ema_val_top5=88.0)
        rows.append(row)
    return rows


def _run(folder, history):
    os.makedirs(folder)
    RunLogger(str(folder), tensorboard=False).write_epochs(history)  # the files training writes
    return str(folder)


def test_reads_log_jsonl_and_summary_csv_alike(tmp_path):
    history = _history(4, 0.001, skip_eval=(1,))
    run = _run(tmp_path / "a", history)
    from_jsonl = read_history(run)
    os.remove(os.path.join(run, "log.jsonl"))
    from_csv = read_history(run)
    assert len(from_jsonl) == len(from_csv) == 4
    for a, b, want in zip(from_jsonl, from_csv, history):
        assert a["train_loss"] == b["train_loss"] == want["train_loss"]
        assert (math.isnan(a["val_top1"]) and math.isnan(b["val_top1"])) == ("val_top1" not in want)


def test_plots_every_run_with_model_and_ema(tmp_path):
    a, b = _history(5, 0.001), _history(3, 0.002, with_ema=False)
    fig = plot_runs([a, b], ["a", "b"])
    loss, top1, lr = fig.axes
    assert [list(line.get_ydata()) for line in loss.lines] == [[r["train_loss"] for r in h] for h in (a, b)]
    assert [line.get_label() for line in top1.lines] == ["a", "a (EMA)", "b"]  # b logged no EMA
    assert list(top1.lines[1].get_ydata()) == [r["ema_val_top1"] for r in a]
    assert list(lr.lines[0].get_xdata()) == [1, 2, 3, 4, 5]  # epochs completed
    assert [t.get_text() for t in top1.get_legend().get_texts()] == ["a", "a (EMA)", "b"]


@pytest.mark.slow  # matplotlib renders four figures (2.3 s)
def test_cli_writes_the_same_png_twice_and_keeps_existing_files(tmp_path, capsys):
    runs = [_run(tmp_path / "r1", _history(4, 0.001)), _run(tmp_path / "r2", _history(6, 0.002))]
    (tmp_path / "one").mkdir()
    out1, out2 = tmp_path / "one" / "curves.png", tmp_path / "two.png"
    assert main([*runs, "--output", str(out1)]) == 0
    assert main([*runs, "--output", str(out2), "--title", "t"]) == 0
    assert main([*runs, "--output", str(tmp_path / "three.png"), "--title", "t"]) == 0
    assert out1.read_bytes().startswith(b"\x89PNG") and b"Software" not in out1.read_bytes()
    assert out2.read_bytes() == (tmp_path / "three.png").read_bytes()
    assert out2.read_bytes() != out1.read_bytes()  # the title is drawn
    out1.write_bytes(b"mine")
    capsys.readouterr()
    assert main([*runs, "--output", str(out1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err and out1.read_bytes() == b"mine"
    assert main([*runs, "--output", str(out1), "--overwrite"]) == 0 and out1.read_bytes() != b"mine"
    assert not [n for n in os.listdir(tmp_path / "one") if ".tmp" in n]


def test_bad_inputs_give_one_line(tmp_path, capsys):
    good = _run(tmp_path / "good", _history(2, 0.001))
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "log.jsonl").write_text(json.dumps({"epoch": 0, "train_loss": 1.0}) + "\n{not json\n")
    cases = [
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(empty)], "no log.jsonl or summary.csv"),
        ([str(broken)], "line 2"),
        ([good, "--labels", "a,b"], "2 names for 1 runs"),
        ([good, "--output", str(tmp_path / "c.jpg")], ".png"),
        ([good, "--output", str(tmp_path / "no" / "c.png")], "create the folder first"),
    ]
    for args, message in cases:
        if "--output" not in args:
            args = args + ["--output", str(tmp_path / "c.png")]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "c.png").exists()


def test_never_writes_over_a_run_log(tmp_path, capsys):
    run = _run(tmp_path / "r", _history(2, 0.001))
    log = os.path.join(run, "summary.csv")
    before = open(log, "rb").read()
    assert main([run, "--output", log + ".png"]) == 0  # beside it is fine
    os.rename(log, log + ".bak")
    os.symlink(log + ".png", log)  # a summary.csv that is the PNG: --output would destroy an input
    assert main([run, "--output", log + ".png", "--overwrite"]) == 2
    assert "same file" in capsys.readouterr().err
    assert open(log + ".bak", "rb").read() == before
