"""validate.py --eval-set: several named sets in one call, each equal to its own call and to a hand count."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from t2t import validate
from test_validate import MODEL, hand_metrics, tiny_model

CLASSES = sorted(f"c{i}" for i in range(12))  # as training records them: c0, c1, c10, c11, c2, ...
COUNTS = (1,) * 11 + (2,)  # 13 images: odd, so the second of two ranks gets one fewer


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """The same images as class-name folders (val), as index folders (v2: folder k holds class k, and '10' sorts
    after '2' only by value), and two classes of them (sub); a checkpoint that records the class names."""
    root = tmp_path_factory.mktemp("sets")
    rng = np.random.default_rng(0)
    samples = []
    for label, (name, count) in enumerate(zip(CLASSES, COUNTS)):
        for i in range(count):
            folder = root / "val" / name
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"img{i}.png"
            Image.fromarray(rng.integers(0, 256, (36 + 4 * i, 40, 3), dtype=np.uint8)).save(path)
            samples.append((str(path), label))
            shutil.copytree(folder, root / "v2" / str(label), dirs_exist_ok=True)
            if name in ("c1", "c10"):
                shutil.copytree(folder, root / "sub" / name, dirs_exist_ok=True)
    for label in range(3):  # a few-shot set: 3 classes of 4 images
        folder = root / "fs" / f"k{label}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (40, 36 + 2 * i, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    model = tiny_model(3, num_classes=len(CLASSES))
    ckpt = root / "run.pth"
    torch.save({"state_dict_ema": model.state_dict(), "run": {"classes": CLASSES}}, ckpt)
    return {"root": root, "samples": samples, "model": model, "ckpt": str(ckpt)}


def rows_of(capsys, tmp_path, name, *args):
    out = tmp_path / name
    code = validate.main(["--device", "cpu", "--workers", "0", "--batch-size", "4", "-m", MODEL, "--json", str(out),
                          *map(str, args)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured.out


def set_args(sets):
    root = sets["root"]
    return ["--data-dir", root / "val", "--eval-set", f"v2={root / 'v2'}", f"sub={root / 'sub'}",
            "--checkpoint", sets["ckpt"]]


def test_several_sets_in_one_call_equal_separate_calls_and_hand_counts(sets, tmp_path, capsys):
    rows, stdout = rows_of(capsys, tmp_path, "all.json", *set_args(sets))
    assert [r["eval_set"] for r in rows] == ["val", "v2", "sub"]
    assert [r["count"] for r in rows] == [13, 13, 2] and [r["classes"] for r in rows] == [12, 12, 2]
    # The index-named folders score exactly as the named ones.
    expected = hand_metrics(sets["model"], sets["samples"])
    for row in rows[:2]:
        assert (row["top1"], row["top5"], row["count"]) == (expected["top1"], expected["top5"], expected["count"])
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-4)
    # Two classes (c1 = output 1, c10 = output 2): the logits cut to those two outputs.
    sub = [(p, label) for p, label in sets["samples"] if CLASSES[label] in ("c1", "c10")]
    from t2t.engine.eval_sets import SubsetLogits
    wrapped = SubsetLogits(sets["model"], [1, 2])
    by_hand = hand_metrics(wrapped, [(p, [1, 2].index(label)) for p, label in sub])
    assert rows[2]["top1"] == by_hand["top1"] and rows[2]["top5"] == 100.0
    assert rows[2]["loss"] == pytest.approx(by_hand["loss"], rel=1e-4)
    table = [line.split() for line in stdout.splitlines() if line.split()[:1] in (["val"], ["v2"], ["sub"])]
    assert [line[0] for line in table] == ["val", "v2", "sub"]  # one table line per set
    for i, (flag, name) in enumerate([("--data-dir", "val"), ("--eval-set", "v2"), ("--eval-set", "sub")]):
        value = sets["root"] / name if flag == "--data-dir" else f"{name}={sets['root'] / name}"
        alone, _ = rows_of(capsys, tmp_path, f"{name}.json", flag, value, "--checkpoint", sets["ckpt"])
        assert len(alone) == 1 and alone[0]["eval_set"] == name
        for key in ("count", "top1", "top5"):
            assert alone[0][key] == rows[i][key], (name, key)
        assert alone[0]["loss"] == pytest.approx(rows[i]["loss"], rel=1e-6)


def test_a_set_that_fits_no_outputs_is_refused(sets, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(sets["root"] / "val" / "c1", bad / "dog")
    code = validate.main(["--device", "cpu", "--workers", "0", "-m", MODEL, "--eval-set", f"odd={bad}",
                          "--checkpoint", sets["ckpt"]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "'odd'" in err and "'dog'" in err and "cannot be matched" in err
    assert validate.main(["--device", "cpu", "--checkpoint", sets["ckpt"]]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_fewshot_probe_equals_a_hand_probe(sets, tmp_path, capsys):
    from t2t.engine.fewshot import fewshot_accuracy, shot_split
    from test_validate import paper_eval_transform

    fs = sets["root"] / "fs"
    rows, stdout = rows_of(capsys, tmp_path, "fs.json", "--fewshot", fs, "--shots", "1,2", "--seed", "3",
                           "--checkpoint", sets["ckpt"])
    again, _ = rows_of(capsys, tmp_path, "fs2.json", "--fewshot", fs, "--shots", "1,2", "--seed", "3",
                       "--checkpoint", sets["ckpt"])
    assert [r["eval_set"] for r in rows] == ["fewshot-1shot", "fewshot-2shot"] and rows == again
    assert "fewshot-2shot" in stdout
    paths = sorted(str(p) for p in fs.glob("*/*.png"))
    labels = torch.tensor([int(p.split("/")[-2][1:]) for p in paths])
    with torch.no_grad():
        model = sets["model"]
        features = model.forward_head(model.forward_features(
            torch.stack([paper_eval_transform(p, 32) for p in paths])), pre_logits=True)
    split = shot_split(labels.tolist(), 3, [1, 2], seed=3)
    for row, k in zip(rows, (1, 2)):
        expected = fewshot_accuracy(features[split.shots[k]], labels[split.shots[k]], features[split.test],
                                    labels[split.test], 3, l2=1024.0)
        assert row["top1"] == pytest.approx(expected, abs=1e-9) and row["count"] == len(split.test) == 6
    code = validate.main(["--device", "cpu", "-m", MODEL, "--fewshot", str(fs), "--shots", "4", "--checkpoint",
                          sets["ckpt"]])
    assert code == 2 and "class 0 has 4 images" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_equal_one_process(sets, tmp_path):
    from test_distributed_eval import validate_on_one_and_two_ranks

    args = [*map(str, set_args(sets)), "-m", MODEL, "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--tta", "none,flip", "--fewshot", str(sets["root"] / "fs"), "--shots", "1,2"]
    one, two, _ = validate_on_one_and_two_ranks(args, "--json", tmp_path)
    assert len(one) == len(two) == 3 * 2 + 2
    for a, b in zip(one, two):
        assert (a["world_size"], b["world_size"]) == (1, 2)
        assert (a["eval_set"], a["tta"]) == (b["eval_set"], b["tta"])
        for key in ("count", "top1", "top5"):
            assert a[key] == b[key], (a["eval_set"], key)
        if a["loss"] is not None:
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
