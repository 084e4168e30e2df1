"""validate.py's evaluation suite: size sweeps, flip TTA, ImageNet-ReaL labels, several checkpoints.

Expected figures are counted here independently, with the PIL eval transform of test_validate.py and
the model run on the whole set at once.
"""
import csv
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import t2t
from t2t.engine.eval_suite import FlipTTA, format_table, load_real_labels, resolutions
from test_validate import MODEL, NUM_CLASSES, ROOT, paper_eval_transform, tiny_model
from t2t import validate

COUNTS = (2, 1, 1, 2, 1, 1, 1)  # 9 images: odd, so the second of two ranks gets one fewer


def make_val_folder(root, seed=0):
    """Class folders of images named like ImageNet's validation files, numbered so that the sorted file
    names interleave the classes; returns [(path, label)] in file-name order."""
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(sum(COUNTS)) + 1
    samples, n = [], 0
    for label, count in enumerate(COUNTS):
        os.makedirs(os.path.join(root, f"c{label}"))
        for i in range(count):
            w, h = (40, 36) if (label + i) % 2 else (34, 46)
            path = os.path.join(root, f"c{label}", f"ILSVRC2012_val_{numbers[n]:08d}.png")
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
            samples.append((path, label))
            n += 1
    return sorted(samples, key=lambda s: os.path.basename(s[0]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    samples = make_val_folder(str(root / "val"))
    model, ema = tiny_model(1), tiny_model(2)
    ckpt = root / "run.pth"
    torch.save({"model": model.state_dict(), "state_dict_ema": ema.state_dict()}, ckpt)
    other = root / "other.pth"
    torch.save({"state_dict_ema": tiny_model(5).state_dict()}, other)
    return {"root": root, "dir": str(root / "val"), "samples": samples, "ckpt": str(ckpt), "other": str(other),
            "ema": ema}


@torch.no_grad()
def hand_logits(model, samples, img_size=32, crop_pct=0.9, flip=False):
    """Logits of the whole set in one forward pass (and of the mirrored batch, averaged, with `flip`)."""
    images = torch.stack([paper_eval_transform(p, img_size, crop_pct) for p, _ in samples])
    logits = model.eval()(images)
    if flip:
        logits = (logits + model(torch.flip(images, dims=[3]))) / 2
    return logits


def counts_of(logits, samples):
    targets = torch.tensor([label for _, label in samples])
    top5 = logits.topk(5, dim=1).indices
    return {"top1": 100.0 * (top5[:, 0] == targets).sum().item() / len(samples),
            "top5": 100.0 * (top5 == targets[:, None]).any(dim=1).sum().item() / len(samples),
            "loss": F.cross_entropy(logits, targets).item(), "count": len(samples)}


def run_rows(capsys, tmp_path, *args, name="rows.json"):
    out = tmp_path / name
    code = validate.main(["--device", "cpu", "--workers", "0", "--batch-size", "4", "--json", str(out),
                          *map(str, args)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured.out


def same_figures(a, b):
    for key in ("count", "top1", "top5", "real_top1", "real_count"):
        assert a.get(key) == b.get(key), key
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)


def test_sweep_rows_equal_separate_invocations(data, tmp_path, capsys):
    rows, stdout = run_rows(capsys, tmp_path, "--data-dir", data["dir"], "--checkpoint", data["ckpt"], "-m", MODEL,
                            "--img-size", "32,48", "--crop-pct", "0.9,1.0")
    assert [(r["img_size"], r["crop_pct"], r["tta"]) for r in rows] == [(32, 0.9, "none"), (48, 1.0, "none")]
    for i, (size, crop) in enumerate([(32, 0.9), (48, 1.0)]):
        alone, _ = run_rows(capsys, tmp_path, "--data-dir", data["dir"], "--checkpoint", data["ckpt"], "-m", MODEL,
                            "--img-size", size, "--crop-pct", crop, name=f"alone{i}.json")
        assert len(alone) == 1
        same_figures(rows[i], alone[0])
        # And both equal the hand count: at 48 the 32 px position table is interpolated as when loading.
        model = tiny_model(0, img_size=size)
        t2t.load_pretrained_weights(model, data["ckpt"])
        expected = counts_of(hand_logits(model, data["samples"], size, crop), data["samples"])
        assert rows[i]["top1"] == expected["top1"] and rows[i]["top5"] == expected["top5"]
        assert rows[i]["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    header = [line for line in stdout.splitlines() if line.split()[:2] == ["set", "checkpoint"]]
    assert len(header) == 1 and "size" in header[0] and "top1" in header[0]  # the table, once


def test_one_crop_for_every_size_and_bad_pairings(capsys):
    assert resolutions([224, 384], [1.0], 0.9) == resolutions([224, 384], [1.0, 1.0], 0.875)
    assert [r.crop_pct for r in resolutions([224, 384], None, 0.9)] == [0.9, 0.9]
    with pytest.raises(ValueError, match="2 values for 3 sizes"):
        resolutions([224, 288, 384], [0.9, 1.0], 0.9)
    with pytest.raises(ValueError, match="--img-size 100"):
        resolutions([100], None, 0.9)


def test_flip_tta_is_the_mean_of_two_forward_passes(data, tmp_path, capsys):
    model = data["ema"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (model(x) + model(torch.flip(x, dims=[3]))) / 2
        torch.testing.assert_close(FlipTTA(model)(x), expected)
    rows, _ = run_rows(capsys, tmp_path, "--data-dir", data["dir"], "--checkpoint", data["ckpt"], "-m", MODEL,
                       "--tta", "none,flip")
    assert [r["tta"] for r in rows] == ["none", "flip"]
    plain = counts_of(hand_logits(model, data["samples"]), data["samples"])
    flipped_logits = hand_logits(model, data["samples"], flip=True)
    flipped = counts_of(flipped_logits, data["samples"])
    for row, expected in zip(rows, (plain, flipped)):
        assert row["top1"] == expected["top1"] and row["top5"] == expected["top5"]
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    assert rows[0]["loss"] != pytest.approx(rows[1]["loss"], rel=1e-4)  # the mirror changed the logits


def real_file(tmp_path, entries):
    path = tmp_path / "real.json"
    path.write_text(json.dumps(entries))
    return path


def test_real_top1_equals_a_hand_count(data, tmp_path, capsys):
    predictions = hand_logits(data["ema"], data["samples"]).argmax(dim=1).tolist()  # in file-name order
    rng = np.random.default_rng(1)
    entries = [[] if i % 4 == 0 else sorted(rng.choice(NUM_CLASSES, size=1 + i % 3, replace=False).tolist())
               for i in range(len(predictions))]
    entries[1] = [predictions[1]]  # at least one hit and one labelled miss
    entries[2] = [c for c in range(NUM_CLASSES) if c != predictions[2]]
    labelled = [i for i, e in enumerate(entries) if e]
    hits = sum(predictions[i] in entries[i] for i in labelled)
    # Read in the loader's class-folder order instead of by file name, the entries would give another count.
    folder_order = sorted(range(len(data["samples"])), key=lambda i: data["samples"][i][0])
    misread = sum(predictions[i] in entries[j] for j, i in enumerate(folder_order) if entries[j])
    assert misread != hits
    rows, stdout = run_rows(capsys, tmp_path, "--data-dir", data["dir"], "--checkpoint", data["ckpt"], "-m", MODEL,
                            "--real-labels", real_file(tmp_path, entries))
    assert rows[0]["real_count"] == len(labelled) == 6
    assert rows[0]["real_top1"] == 100.0 * hits / len(labelled)
    assert rows[0]["top1"] == counts_of(hand_logits(data["ema"], data["samples"]), data["samples"])["top1"]
    assert "real_top1" in stdout  # the table's column, beside top1
    # Matched by file name, not by the class-folder order the loader reads.
    labels = load_real_labels(str(tmp_path / "real.json"), [data["samples"][i][0] for i in folder_order])
    for row, i in enumerate(folder_order):
        assert [c for c in labels[row].tolist() if c >= 0] == entries[i]


def test_real_labels_of_another_length_are_refused(data, tmp_path, capsys):
    bad = real_file(tmp_path, [[0]] * 8)
    code = validate.main(["--device", "cpu", "--workers", "0", "--data-dir", data["dir"], "--checkpoint",
                          data["ckpt"], "-m", MODEL, "--real-labels", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err and "8 entries" in err and "9 images" in err


def test_several_checkpoints_give_one_row_each(data, tmp_path, capsys):
    rows, stdout = run_rows(capsys, tmp_path, "--data-dir", data["dir"], "--checkpoint", data["ckpt"], data["other"],
                            "-m", MODEL, "--csv", tmp_path / "rows.csv")
    assert [r["checkpoint"] for r in rows] == [data["ckpt"], data["other"]]
    for row, seed in zip(rows, (2, 5)):
        expected = counts_of(hand_logits(tiny_model(seed), data["samples"]), data["samples"])
        assert row["top1"] == expected["top1"] and row["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    with open(tmp_path / "rows.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["top1"]) for r in table] == [r["top1"] for r in rows]
    assert "run.pth" in stdout and "other.pth" in stdout
    # One result object cannot hold two rows; the files written are never replaced without --overwrite.
    args = ["--device", "cpu", "--workers", "0", "--data-dir", data["dir"], "--checkpoint", data["ckpt"],
            data["other"], "-m", MODEL]
    assert validate.main(args + ["--results-file", str(tmp_path / "one.json")]) == 2
    assert "--json" in capsys.readouterr().err
    assert validate.main(args + ["--csv", str(tmp_path / "rows.csv")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert validate.main(args + ["--json", data["ckpt"], "--overwrite"]) == 2
    assert "same file as --checkpoint" in capsys.readouterr().err


def test_table_lists_every_row():
    rows = [{"checkpoint": "/a/x.pth", "model": MODEL, "weights": "ema", "img_size": s, "crop_pct": 0.9,
             "tta": "none", "top1": 50.0, "top5": 90.0, "loss": 1.5, "count": 9, "images_per_sec": 10.0}
            for s in (224, 384)]
    lines = format_table(rows).splitlines()
    assert len(lines) == 4 and lines[0].split()[0] == "checkpoint"
    assert lines[2].split()[:4] == ["x.pth", MODEL, "ema", "224"] and lines[3].split()[3] == "384"


@pytest.mark.slow
def test_two_ranks_sweep_equals_one_process(data, tmp_path):
    predictions = hand_logits(data["ema"], data["samples"]).argmax(dim=1).tolist()
    entries = [[] if i % 3 == 0 else [p, (p + i) % NUM_CLASSES] if i % 2 else [(p + 1) % NUM_CLASSES]
               for i, p in enumerate(predictions)]
    labels = real_file(tmp_path, entries)
    args = ["--data-dir", data["dir"], "-m", MODEL, "--checkpoint", data["ckpt"], data["other"], "--img-size", "32,48",
            "--tta", "none,flip", "--real-labels", str(labels), "--batch-size", "2", "--workers", "0",
            "--device", "cpu"]
    from test_distributed_eval import validate_on_one_and_two_ranks

    one, two, _ = validate_on_one_and_two_ranks(args, "--json", tmp_path)
    assert len(one) == len(two) == 2 * 2 * 2
    for a, b in zip(one, two):
        assert (a["world_size"], b["world_size"]) == (1, 2)
        assert (a["checkpoint"], a["img_size"], a["tta"]) == (b["checkpoint"], b["img_size"], b["tta"])
        same_figures(a, b)
        assert a["real_count"] == 6
