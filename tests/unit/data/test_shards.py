"""Tar shards: made from a folder they give the folder's samples bit for bit; foreign shards are indexed on
first use; every bad input is one line; block order is a deterministic, resumable permutation."""
from __future__ import annotations

import io
import json
import os
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from t2t.config import ConfigError, load_config
from t2t.data import setup as data_setup
from t2t.data.dataset import DatasetError, ImageDataset, ImageFolderDataset
from t2t.data.sampler import TrainSampler, block_order
from t2t.data.shards import INDEX_SUFFIX, make_shards, open_shards
from t2t.data.transforms import build_train_transform
from train_helpers import make_data


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = make_data(str(root / "data"), train=5, val=2)  # 15 training images, 6 validation
    make_shards(data, str(root / "shards"), shard_size=4)
    return data, str(root / "shards")


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def _jpeg(colour=(200, 30, 30), size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


# ---------------------------------------------------------------------------------------------
# Made from a folder: the same samples, in the same order


def test_shards_hold_the_folders_samples_in_its_order(folder_and_shards):
    data, shards = folder_and_shards
    for split in ("train", "val"):
        folder = ImageFolderDataset(os.path.join(data, split)).reader
        reader = open_shards(os.path.join(shards, split), json.load(open(os.path.join(shards, "classes.json")))["classes"])
        assert len(reader) == len(folder) and reader.classes == folder.classes
        assert reader.block_sizes == [4] * (len(folder) // 4) + ([len(folder) % 4] if len(folder) % 4 else [])
        for i in range(len(folder)):
            assert reader.read(i) == folder.read(i)
            assert reader.target(i) == folder.target(i) and reader.relpath(i) == folder.relpath(i)
    assert sorted(os.listdir(os.path.join(shards, "train"))) == [
        f"train-{k:06d}.tar{suffix}" for k in range(4) for suffix in ("", INDEX_SUFFIX)]


def test_augmented_samples_are_bit_identical_to_the_folders(folder_and_shards):
    data, shards = folder_and_shards
    transform = build_train_transform(32, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    folder = ImageFolderDataset(os.path.join(data, "train"), transform, seed=3)
    sharded = ImageDataset(open_shards(os.path.join(shards, "train")), transform, seed=3)
    for epoch in (0, 1):
        folder.set_epoch(epoch)
        sharded.set_epoch(epoch)
        for i in range(len(folder)):
            a, b = folder[i], sharded[i]
            assert torch.equal(a[0], b[0]) and a[1] == b[1]


def test_make_shards_keeps_finished_shards_and_refuses_bad_images(tmp_path, folder_and_shards):
    data, shards = folder_and_shards
    out = str(tmp_path / "out")
    make_shards(data, out, shard_size=4)
    first = os.path.join(out, "train", "train-000000.tar")
    mtime = os.stat(first).st_mtime_ns
    os.remove(os.path.join(out, "train", "train-000003.tar"))  # as if stopped before the last shard
    make_shards(data, out, shard_size=4)
    assert os.stat(first).st_mtime_ns == mtime and os.path.exists(os.path.join(out, "train", "train-000003.tar"))
    bad = os.path.join(data, "train", sorted(os.listdir(os.path.join(data, "train")))[0], "zz_bad.jpg")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    try:
        with pytest.raises(DatasetError, match="zz_bad.jpg") as err:
            make_shards(data, str(tmp_path / "bad"), shard_size=4)
        _one_line(err)
        counts = make_shards(data, str(tmp_path / "skipped"), shard_size=4, skip_bad_images=True)
        assert counts["train"] == 15
    finally:
        os.remove(bad)


# ---------------------------------------------------------------------------------------------
# Foreign shards: webdataset layout, keys in any order, no index


def test_foreign_shards_are_indexed_on_first_use_and_cached(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    rng = random.Random(0)
    expected = {}
    for k in range(2):
        members = []
        for j in range(5):
            key = f"sample{k}{j:03d}"
            colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            expected[key] = (_jpeg(colour), j % 3)
            members += [(f"{key}.cls", str(j % 3).encode()), (f"{key}.jpg", expected[key][0]),
                        (f"{key}.json", b"{}")]  # other members are ignored
        rng.shuffle(members)  # .cls before or after its image, samples interleaved
        _write_tar(str(folder / f"part-{k}.tar"), members)
    reader = open_shards(str(folder))
    assert len(reader) == 10 and reader.classes == ["0", "1", "2"]  # no classes.json: the indices, as text
    for i in range(len(reader)):
        key = reader.relpath(i).split(".")[0]
        assert reader.read(i) == expected[key][0] and reader.target(i) == expected[key][1]
        assert reader.path(i).startswith(str(folder / "part-")) and reader.path(i).endswith(f":{key}.jpg")
    index = str(folder / "part-0.tar") + INDEX_SUFFIX
    assert os.path.exists(index)
    before = os.stat(index).st_mtime_ns
    again = open_shards(str(folder))  # from the cached index
    assert os.stat(index).st_mtime_ns == before
    assert [again.read(i) for i in range(10)] == [reader.read(i) for i in range(10)]


# ---------------------------------------------------------------------------------------------
# Bad input: one line each, nothing written over


def test_a_file_that_is_not_a_tar(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "x.tar").write_bytes(b"\x00garbage" * 200)
    with pytest.raises(DatasetError, match="x.tar.*not a readable tar") as err:
        open_shards(str(tmp_path / "train"))
    _one_line(err)


def test_a_member_without_cls(tmp_path):
    (tmp_path / "train").mkdir()
    _write_tar(str(tmp_path / "train" / "a.tar"), [("k1.jpg", _jpeg()), ("k1.cls", b"0"), ("k2.jpg", _jpeg())])
    with pytest.raises(DatasetError, match="'k2.jpg' of shard .*a.tar.*'k2.cls'") as err:
        open_shards(str(tmp_path / "train"))
    _one_line(err)
    (tmp_path / "train" / "b.tar").write_bytes(b"")  # an empty file is no tar either
    os.remove(tmp_path / "train" / "a.tar")
    with pytest.raises(DatasetError, match="b.tar"):
        open_shards(str(tmp_path / "train"))


def test_a_cls_that_is_not_a_number(tmp_path):
    (tmp_path / "train").mkdir()
    _write_tar(str(tmp_path / "train" / "a.tar"), [("k1.jpg", _jpeg()), ("k1.cls", b"cat")])
    with pytest.raises(DatasetError, match="'k1.cls' of shard .*a.tar.*expected a class index") as err:
        open_shards(str(tmp_path / "train"))
    _one_line(err)


def test_a_class_index_out_of_range(tmp_path, folder_and_shards):
    (tmp_path / "train").mkdir()
    _write_tar(str(tmp_path / "train" / "a.tar"), [("k1.jpg", _jpeg()), ("k1.cls", b"7")])
    with pytest.raises(DatasetError, match="'k1.jpg' of shard .*a.tar.* class index 7, out of range for the 3 "
                                           "classes of classes.json") as err:
        open_shards(str(tmp_path / "train"), ["a", "b", "c"])
    _one_line(err)


def test_a_shard_changed_after_its_index_was_made(tmp_path, folder_and_shards):
    _, shards = folder_and_shards
    folder = tmp_path / "train"
    folder.mkdir()
    for name in ("train-000000.tar", "train-000000.tar" + INDEX_SUFFIX):
        with open(os.path.join(shards, "train", name), "rb") as src, open(folder / name, "wb") as dst:
            dst.write(src.read())
    index = folder / ("train-000000.tar" + INDEX_SUFFIX)
    saved = index.read_bytes()
    with pytest.raises(DatasetError, match="train-000000.tar' changed after its index") as err:
        open_shards(str(folder))  # the copy has another mtime than the one indexed
    _one_line(err)
    assert index.read_bytes() == saved  # nothing written over
    os.remove(index)
    assert len(open_shards(str(folder))) == 4  # indexed again once the index is deleted


def test_truncated_and_undecodable_members_name_shard_and_member(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    good, broken = _jpeg(), b"\xff\xd8 not really a jpeg"
    _write_tar(str(folder / "a.tar"), [("k0.jpg", good), ("k0.cls", b"0"), ("k1.jpg", broken), ("k1.cls", b"1"),
                                       ("k2.cls", b"0"), ("k2.jpg", good)])
    whole = (folder / "a.tar").read_bytes()
    reader = open_shards(str(folder))
    cut = int(reader.offsets[2]) + 100  # the last image cut short: a copy that stopped half way
    os.remove(str(folder / "a.tar") + INDEX_SUFFIX)
    (folder / "a.tar").write_bytes(whole[:cut])
    transform = build_train_transform(16, auto_augment=None)
    ds = ImageDataset(open_shards(str(folder)), transform)
    assert torch.is_tensor(ds[0][0])
    with pytest.raises(DatasetError, match=r"a.tar:k1.jpg") as err:
        ds[1]
    _one_line(err)
    with pytest.raises(DatasetError, match=r"a.tar:k2.jpg.*truncated member") as err:
        ds[2]
    _one_line(err)
    skipping = ImageDataset(open_shards(str(folder)), transform, skip_bad_images=True)
    assert skipping[1][1] == 0 and skipping.bad_images == 2  # k1 and k2 skipped: k0 (wrapping round) instead


# ---------------------------------------------------------------------------------------------
# Block order


def test_block_order_reads_shards_in_windows_and_is_a_function_of_seed_and_epoch():
    blocks = [5, 3, 4, 6, 2, 4]
    shard_of = np.repeat(np.arange(len(blocks)), blocks)

    def order(seed, epoch):
        sampler = TrainSampler(sum(blocks), seed=seed, blocks=blocks, block_window=2)
        sampler.set_epoch(epoch)
        return sampler.epoch_indices()

    a = order(0, 0)
    assert sorted(a) == list(range(sum(blocks)))  # a permutation
    assert a == order(0, 0) and a != order(0, 1) and a != order(1, 0)
    assert a != list(range(sum(blocks)))
    global_order = TrainSampler(sum(blocks), seed=0)
    global_order.set_epoch(0)
    assert a != global_order.epoch_indices()  # the same generator, another order
    # Each window of two shards is read whole before the next: the samples up to the third shard met
    # are exactly those of the first two.
    position = 0
    while position < len(a):
        shards, size = set(), 0
        for i in a[position:]:
            shards.add(int(shard_of[i]))
            if len(shards) > 2:
                break
            size += 1
        assert sum(blocks[s] for s in {int(shard_of[i]) for i in a[position:position + size]}) == size
        position += size
    # The global order is the generator's, reproduced without a sampler.
    g = torch.Generator()
    from t2t.rng import shuffle_seed
    g.manual_seed(shuffle_seed(0, 0))
    assert block_order(blocks, 2, g).tolist() == a


def test_block_order_resumes_and_splits_over_ranks_like_the_global_order():
    blocks = [6, 6, 6, 6]
    whole = TrainSampler(24, seed=5, blocks=blocks, block_window=2, epoch_samples=24)
    whole.set_epoch(3)
    full = whole.epoch_indices()
    whole.set_epoch(3, start_sample=10)
    assert list(whole) == full[10:]  # a resume skips inside the sampler
    ranks = []
    for rank in range(2):
        part = TrainSampler(24, num_replicas=2, rank=rank, seed=5, blocks=blocks, block_window=2, epoch_samples=24)
        part.set_epoch(3, start_sample=10)
        ranks.append(list(part))
    assert [k for pair in zip(*ranks) for k in pair] == full[10:]  # the 2 ranks read the global order between them


def test_block_order_needs_shards():
    with pytest.raises(ConfigError, match="data.shuffle=block with data.format=imagefolder") as err:
        load_config(None, ["data.shuffle=block", "data.format=imagefolder"])
    _one_line(err)


def _small_spec(*overrides: str) -> data_setup.DataSpec:
    cfg = load_config(None, ["data.workers=0", "model.img_size=32", *overrides])
    return data_setup.DataSpec.from_config(cfg, global_batch_size=4, eval_crop_pct=0.9, eval_interpolation="bicubic",
                                           batch_size=4)


def test_block_order_on_a_folder_read_as_auto_is_refused(folder_and_shards):
    data, _ = folder_and_shards
    with pytest.raises(DatasetError, match="data.shuffle=block") as err:
        data_setup.build_train_and_val(_small_spec("data.shuffle=block"), data)
    _one_line(err)


def test_a_minival_of_shards_read_as_auto_is_refused_naming_them(folder_and_shards):
    _, shards = folder_and_shards
    with pytest.raises(ConfigError, match="holds tar shards: set it to 0") as err:
        data_setup.build_train_and_val(_small_spec("data.holdout_fraction=0.25"), shards)
    _one_line(err)


# ---------------------------------------------------------------------------------------------
# Through the data layer: repeated augmentation on shards is the folder's


def _first_batches(data_dir, *overrides, steps=2):
    cfg = load_config(None, ["data.workers=0", "model.img_size=32", "train.seed=4", *overrides])
    spec = data_setup.DataSpec.from_config(cfg, global_batch_size=4, eval_crop_pct=0.9, eval_interpolation="bicubic",
                                           batch_size=4)
    data = data_setup.build_train_and_val(spec, data_dir)
    batches = []
    for epoch in (0, 1):
        for step, (images, targets) in enumerate(data.train_batches(epoch)):
            if step == steps:
                break
            batches.append((images, targets))
    return data, batches


def test_repeated_augmentation_on_shards_is_the_folders(folder_and_shards):
    data, shards = folder_and_shards
    _, from_folder = _first_batches(data, "data.repeated_aug=true", "data.repeats=3")
    loaded, from_shards = _first_batches(shards, "data.repeated_aug=true", "data.repeats=3", "data.format=shards")
    assert isinstance(loaded.train_loader.dataset.reader, type(open_shards(os.path.join(shards, "train"))))
    for (a, ta), (b, tb) in zip(from_folder, from_shards):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    _, blocked = _first_batches(shards, "data.shuffle=block", "data.block_shards=2")
    _, blocked_again = _first_batches(shards, "data.shuffle=block", "data.block_shards=2")
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(blocked, blocked_again))


def test_shard_order_benchmark_reads_both_orders(folder_and_shards):
    from t2t.tools.shard_bench import run_shard_order_benchmark

    _, shards = folder_and_shards
    results = run_shard_order_benchmark(shards, num_images=12, block_shards=2, drop_caches=False)
    assert results["images_read"] == 12 and results["shards"] == 4 and not results["page_cache_dropped"]
    assert results["global_images_per_sec"] > 0 and results["block_images_per_sec"] > 0
    with pytest.raises(ValueError, match="shard order 'zigzag'"):
        run_shard_order_benchmark(shards, orders=["zigzag"], drop_caches=False)


def test_shard_order_benchmark_reads_the_same_samples_from_the_folder(folder_and_shards, tmp_path):
    from t2t.tools.shard_bench import run_shard_order_benchmark

    folder, shards = folder_and_shards
    results = run_shard_order_benchmark(shards, orders=["folder", "global"], num_images=12, drop_caches=False,
                                        folder=folder)
    assert results["folder_images_per_cpu_sec"] > 0 and results["global_vs_folder_images_per_cpu_sec"] > 0
    other = make_data(str(tmp_path / "other"), train=4, val=1)  # 12 images: not the shards' 15
    with pytest.raises(ValueError, match="is not the folder the shards"):
        run_shard_order_benchmark(shards, orders=["folder"], drop_caches=False, folder=other)
