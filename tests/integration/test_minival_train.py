"""train.py with a held-out minival (data.holdout_fraction) and named sets scored after the last epoch."""
import csv
import os
import shutil

from t2t.data.holdout import is_held_out
from train_helpers import load, make_data, run_train, write_config


def test_minival_chooses_best_and_extra_sets_join_the_last_row(tmp_path):
    data = make_data(str(tmp_path / "data"))
    for name in sorted(os.listdir(os.path.join(data, "val")))[::2]:  # a two-class set: scored on those two outputs
        shutil.copytree(os.path.join(data, "val", name), tmp_path / "sub" / name)
    out = tmp_path / "run"
    common = ["-c", write_config(str(tmp_path)), "--data-dir", data, "--output", str(out)]
    run_train(*common, "train.epochs=2", "sched.warmup_epochs=0", "sched.cooldown_epochs=0",
              "data.holdout_fraction=0.25", "eval.metric=ema_minival_top1", f"eval.extra_sets=[sub={tmp_path / 'sub'}]")
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for key in ("minival_top1", "ema_minival_top1", "minival_loss", "val_top1"):
        assert all(row[key] for row in rows), key
    assert rows[-1]["sub_count"] == "8" and rows[-1]["ema_sub_top1"] and not rows[0].get("sub_top1")
    last = load(str(out / "last.pth"))
    state = last["train_state"]
    best = max(range(2), key=lambda e: (float(rows[e]["ema_minival_top1"]), -e))
    assert state["best_epoch"] == best and state["best_metric"] == float(rows[best]["ema_minival_top1"])
    train_root = os.path.join(data, "train")
    held = [p for c in sorted(os.listdir(train_root)) for p in (f"{c}/{n}" for n in os.listdir(
        os.path.join(train_root, c))) if is_held_out(p, 0.25)]
    assert last["run"]["minival_images"] == len(held) > 0 and last["run"]["holdout_fraction"] == 0.25
    # A resume with another fraction would train on the minival: refused in one line.
    proc = run_train(*common, "--resume", "auto", "train.epochs=3", "data.holdout_fraction=0.5",
                     "eval.metric=ema_minival_top1", check=False)
    assert proc.returncode != 0 and "data.holdout_fraction=0.25" in proc.stderr and "Traceback" not in proc.stderr
