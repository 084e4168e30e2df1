"""Token labels stored per block: the batches equal the per-image layout's; a block from other data, a missing
block and a truncated block stop the start in one line; workers map the blocks themselves."""
import importlib.util
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from t2t.config import load_config
from t2t.data import setup as data_setup
from t2t.data.label_blocks import BlockLabels, LabelBlockError, block_path, read_block_header
from t2t.data.token_label import label_path, save_label_map
from t2t.tools.token_labels import main as token_labels_main
from t2t.tools.token_labels import open_train_reader


def _folder(root: str, classes: int = 3, per_class: int = 3) -> None:
    g = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            os.makedirs(os.path.join(root, split, f"c{c}"), exist_ok=True)
            for k in range(per_class):
                pixels = g.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, f"c{c}", f"img{k}.png"))


def _per_image_labels(data_dir: str, label_dir: str) -> None:
    """Random top-2 maps (3 x 3) in the per-image layout, with its labels.json."""
    reader = open_train_reader(data_dir)
    g = torch.Generator().manual_seed(0)
    for i in range(len(reader)):
        values, indices = torch.randn(len(reader.classes), 3, 3, generator=g).mul(3).topk(2, dim=0)
        save_label_map(label_path(label_dir, reader.relpath(i)), values, indices, teacher="0" * 64)
    with open(os.path.join(label_dir, "labels.json"), "w") as f:
        json.dump({"path": "teacher.pth", "size": 1, "sha256": "0" * 64, "model": "t2t_vit_7", "topk": 2,
                   "img_size": 32, "classes": reader.classes}, f)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    data, per_image, blocks = str(root / "data"), str(root / "per-image"), str(root / "blocks")
    _folder(data)
    _per_image_labels(data, per_image)
    assert token_labels_main(["import", "--from", per_image, "--data-dir", data, "--output", blocks,
                              "--block-size", "4", "--workers", "2"]) == 0
    return data, per_image, blocks


def _build(data_dir, label_dir, *overrides):
    cfg = load_config(overrides=["model.img_size=32", "model.token_label=true", "data.workers=0",
                                 "mixup.mixup_alpha=0", "mixup.cutmix_alpha=0", *overrides])
    cfg.token_label.dir = label_dir
    spec = data_setup.DataSpec.from_config(cfg, batch_size=4, global_batch_size=4, eval_crop_pct=0.9,
                                           eval_interpolation="bilinear")
    return data_setup.build_train_and_val(spec, data_dir)


def test_block_batches_equal_per_image_batches(labelled):
    data, per_image, blocks = labelled
    with open(os.path.join(blocks, "labels.json")) as f:
        record = json.load(f)
    assert record["sha256"] == "0" * 64 and record["format"] == "blocks" and record["samples"] == 9
    assert sorted(os.listdir(os.path.join(blocks, "blocks"))) == [f"block-00000{b}.tlb" for b in range(3)]
    a, b = _build(data, per_image), _build(data, blocks)
    assert b.train_loader.dataset.blocks is not None and a.train_loader.dataset.blocks is None
    for epoch in range(2):
        for (xa, ta), (xb, tb) in zip(a.train_batches(epoch), b.train_batches(epoch)):
            assert torch.equal(xa, xb) and ta.keys() == tb.keys()
            for key in ta:
                assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key


def test_worker_copies_map_the_blocks_themselves(labelled):
    data, _, blocks = labelled
    ds = _build(data, blocks).train_loader.dataset
    want = ds.block_map(5)
    assert ds.blocks._maps  # mapped in this process
    copy = pickle.loads(pickle.dumps(ds.blocks))
    assert copy._maps == {}  # a spawned worker gets paths, not a copy of the maps
    got = copy.lookup(5)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1].long(), want[1].long())


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_bad_blocks_are_one_line_each(labelled, tmp_path):
    data, per_image, blocks = labelled
    # another data set: one image more; its blocks are copied into the label folder of this one
    other_data = str(tmp_path / "other-data")
    shutil.copytree(data, other_data)
    Image.new("RGB", (48, 40)).save(os.path.join(other_data, "train", "c0", "img9.png"))
    other = str(tmp_path / "other")
    shutil.copytree(blocks, other)
    broken = str(tmp_path / "broken")
    shutil.copytree(blocks, broken)
    shutil.copytree(per_image, str(tmp_path / "tl-other"))
    save_label_map(label_path(str(tmp_path / "tl-other"), "c0/img9.png"), *torch.randn(3, 3, 3).topk(2, dim=0))
    assert token_labels_main(["import", "--from", str(tmp_path / "tl-other"), "--data-dir", other_data, "--output",
                              str(tmp_path / "other-blocks"), "--block-size", "4"]) == 0
    shutil.copy(block_path(str(tmp_path / "other-blocks"), 1), block_path(broken, 1))
    with pytest.raises(LabelBlockError, match="other data") as err:
        _build(data, broken)
    assert block_path(broken, 1) in _one_line(err)
    # the whole folder of other data: labels.json says so
    with pytest.raises(LabelBlockError, match="10 images") as err:
        _build(data, str(tmp_path / "other-blocks"))
    _one_line(err)
    # a missing block
    shutil.copy(block_path(blocks, 1), block_path(broken, 1))
    os.remove(block_path(broken, 2))
    with pytest.raises(LabelBlockError, match="missing") as err:
        _build(data, broken)
    assert block_path(broken, 2) in _one_line(err)
    # a truncated block
    shutil.copy(block_path(blocks, 2), block_path(broken, 2))
    with open(block_path(broken, 0), "r+b") as f:
        f.truncate(os.path.getsize(block_path(blocks, 0)) - 10)
    with pytest.raises(LabelBlockError, match="cut short") as err:
        _build(data, broken)
    assert block_path(broken, 0) in _one_line(err)
    # not a block at all
    with open(block_path(broken, 0), "wb") as f:
        f.write(b"PK\x03\x04 not a block")
    with pytest.raises(LabelBlockError, match="not a token-label block") as err:
        read_block_header(block_path(broken, 0))
    _one_line(err)


def test_block_reader_opens_no_file_per_sample(labelled, monkeypatch):
    """The start reads one header per block; lookups map each block once, whatever the number of samples."""
    data, _, blocks = labelled
    with open(os.path.join(blocks, "labels.json")) as f:
        record = json.load(f)
    opened = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    labels = BlockLabels(blocks, record, open_train_reader(data), where="test")
    assert len(opened) == 3
    for position in list(range(9)) * 2:
        labels.lookup(position)
    assert len(opened) == 6 and len(set(opened)) == 3 and len(labels._maps) == 3


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="NVIDIA DALI is not installed")
def test_dali_batches_carry_the_pillow_backends_label_rows_and_geometry(labelled):
    """data.backend=dali: each sample's map comes from its block in the plan workers, with the geometry of the
    crop, flip and RandAugment ops drawn on the host: what the Pillow backend's workers hand over."""
    data, _, blocks = labelled
    common = ("data.auto_augment=rand-m9-mstd0.5-inc1", "data.interpolation=bilinear")
    pil, dali = _build(data, blocks, *common), _build(data, blocks, *common, "data.backend=dali", "data.workers=1")
    moved = 0
    for epoch in range(2):
        for (_, ta), (_, tb) in zip(pil.train_batches(epoch), dali.train_batches(epoch)):
            assert ta.keys() == tb.keys()
            for key in ("label", "values", "indices"):
                assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
            torch.testing.assert_close(tb["geometry"], ta["geometry"], rtol=0, atol=1e-6)
            moved += int((ta["geometry"][:, 5:] != torch.tensor([1.0, 0, 0, 0, 1, 0])).any(1).sum())
    assert moved > 0  # RandAugment moved some images: the affine part is compared, not only identities
    (_, la), (_, lb) = next(iter(pil.val_loader)), next(iter(dali.val_loader))  # evaluation: plain labels
    assert torch.equal(la, lb)
