"""Token-label generation and import into blocks: the teacher's top-k maps, resuming by block, refusing to mix
teachers, the same blocks from a folder and from its shards, torchrun ranks sharing the blocks."""
import logging
import os
import subprocess

import numpy as np
import pytest
import timm
import torch

import t2t  # noqa: F401
from t2t.data.label_blocks import block_path, read_block
from t2t.tools.token_labels import dense_logits, open_train_reader
from train_helpers import ROOT, load_script, make_data, torchrun_cmd

main = load_script("generate_token_labels").main
make_shards = load_script("make_shards").main

BLOCK = 4  # 9 images: blocks of 4, 4 and 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tl")
    data = make_data(str(root / "data"), classes=3, train=3, val=1, size=40)
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    torch.save({"arch": "t2t_vit_7", "state_dict_ema": model.state_dict()}, root / "teacher.pth")
    torch.manual_seed(1)
    other = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    torch.save({"arch": "t2t_vit_7", "state_dict_ema": other.state_dict()}, root / "other.pth")
    return root, data, model.eval()


def _args(root, data, out, teacher="teacher.pth"):
    return ["--teacher", str(root / teacher), "--data-dir", data, "--output", str(out), "--topk", "2",
            "--img-size", "32", "--batch-size", "3", "--workers", "0", "--log-interval", "1",
            "--block-size", str(BLOCK)]


def _blocks(out):
    return sorted(os.listdir(os.path.join(out, "blocks")))


def _rows(out):
    """(values, indices) of every sample, in position order, from the blocks."""
    parts = [read_block(os.path.join(out, "blocks", name), mmap=False)[1:] for name in _blocks(out)]
    return np.concatenate([v for v, _ in parts]), np.concatenate([i for _, i in parts])


def test_maps_are_the_teachers_top_k_per_token(setup, tmp_path):
    root, data, model = setup
    out = tmp_path / "labels"
    assert main(_args(root, data, out)) == 0
    assert _blocks(out) == ["block-000000.tlb", "block-000001.tlb", "block-000002.tlb"]
    reader = open_train_reader(data)
    values, indices = _rows(out)
    assert values.shape == (9, 2, 2, 2) and values.dtype == np.float16 and indices.dtype == np.int16
    # sample 5 by hand: resize whole, normalise, the head on each patch token
    from PIL import Image

    from t2t.data.transforms import ToNormalizedTensor
    img = Image.open(reader.path(5)).convert("RGB").resize((32, 32), Image.BICUBIC)
    x = ToNormalizedTensor()(img)[None]
    with torch.no_grad():
        tokens = model.forward_features(x)[0, 1:]  # (4, D)
        scores = model.head(tokens).t().reshape(3, 2, 2)
    want_values, want_indices = scores.topk(2, dim=0)
    assert torch.equal(torch.from_numpy(indices[5]).long(), want_indices)
    torch.testing.assert_close(torch.from_numpy(values[5]).float(), want_values.half().float())
    with torch.no_grad():
        torch.testing.assert_close(dense_logits(model, x)[0], scores)


def test_interrupted_generation_rewrites_only_missing_or_bad_blocks(setup, tmp_path, caplog, capsys):
    root, data, _ = setup
    out = tmp_path / "labels"
    assert main(_args(root, data, out)) == 0
    before = _rows(out)
    os.remove(block_path(str(out), 0))
    with open(block_path(str(out), 2), "r+b") as f:  # a copy cut short
        f.truncate(os.path.getsize(block_path(str(out), 2)) - 3)
    kept = os.stat(block_path(str(out), 1)).st_mtime_ns
    with caplog.at_level(logging.INFO):
        assert main(_args(root, data, out)) == 0
    assert "5 images to label (2 blocks), 1 blocks already done" in caplog.text
    assert "1 existing label blocks are written again" in caplog.text and "cut short" in caplog.text
    assert os.stat(block_path(str(out), 1)).st_mtime_ns == kept
    after = _rows(out)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert main(_args(root, data, out, teacher="other.pth")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.pth" in err[0] and "teacher.pth" in err[0]


def test_shards_made_from_the_folder_get_the_same_blocks(setup, tmp_path):
    root, data, _ = setup
    shards = str(tmp_path / "shards")
    assert make_shards(["--data-dir", data, "--output", shards, "--shard-size", "4"]) == 0
    assert main(_args(root, data, tmp_path / "folder")) == 0
    assert main(_args(root, shards, tmp_path / "sharded")) == 0
    for name in _blocks(tmp_path / "folder"):  # same positions, same relpaths hash, same maps: the same bytes
        with open(tmp_path / "folder" / "blocks" / name, "rb") as a, open(tmp_path / "sharded" / "blocks" / name,
                                                                           "rb") as b:
            assert a.read() == b.read(), name


def test_import_of_a_tokenlabeling_folder(setup, tmp_path, capsys):
    _, data, _ = setup
    reader = open_train_reader(data)
    source = tmp_path / "tl"
    g = torch.Generator().manual_seed(0)
    want = []
    for i in range(len(reader)):  # TokenLabeling's layout: <class>/<stem>.pt, one (2, k, H, W) float16 tensor
        values, indices = torch.randn(3, 3, 3, generator=g).topk(2, dim=0)
        want.append((values.half(), indices))
        path = source / (os.path.splitext(reader.relpath(i))[0] + ".pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.stack([values.half(), indices.half()]), path)
    out = tmp_path / "blocks"
    cmd = ["import", "--from", str(source), "--data-dir", data, "--output", str(out), "--block-size", "4"]
    assert main(cmd) == 0
    values, indices = _rows(out)
    for i, (v, ix) in enumerate(want):
        assert torch.equal(torch.from_numpy(values[i]), v) and torch.equal(torch.from_numpy(indices[i]).long(), ix)
    os.remove(source / (os.path.splitext(reader.relpath(4))[0] + ".pt"))
    os.remove(source / (os.path.splitext(reader.relpath(7))[0] + ".pt"))
    assert main([*cmd[:-3], str(tmp_path / "other"), "--block-size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2 of the 9 images" in err[0] and reader.relpath(4) in err[0], err
    assert not os.path.exists(tmp_path / "other" / "labels.json")


@pytest.mark.slow
def test_two_processes_label_their_blocks_as_one_does(setup, tmp_path):
    root, data, _ = setup
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(_args(root, data, single)) == 0
    cmd = torchrun_cmd("--standalone", "--nproc_per_node=2", script="scripts/generate_token_labels.py") + [
        *_args(root, data, double)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "rank 0 of 2: 5 images to label (2 blocks)" in proc.stderr and "rank 1 of 2: 4 images to label (1 blocks)" \
        in proc.stderr
    assert proc.stderr.count("listed") == 1, proc.stderr  # rank 0 walked the folders; rank 1 got its listing
    assert _blocks(single) == _blocks(double)
    (v1, i1), (v2, i2) = _rows(single), _rows(double)
    assert np.array_equal(i1, i2)
    np.testing.assert_allclose(v1.astype(np.float32), v2.astype(np.float32), atol=2e-3, rtol=0)
