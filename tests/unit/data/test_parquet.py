"""Parquet files (the Hugging Face ImageNet layout) behind the reader interface: the folder's samples in its
order, row groups as the blocks of the block order, found by data.format=auto, every bad input one line."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from t2t.config import load_config
from t2t.data import setup as data_setup
from t2t.data.dataset import DatasetError, open_folder
from t2t.data.parquet import ParquetReader, open_parquet
from t2t.data.sampler import TrainSampler
from parquet_helpers import write_parquet
from train_helpers import make_data

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("parquet") / "data"), train=5, val=2)  # 15 + 6 images


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("struct,hf_layout", [(True, False), (False, True)])
def test_the_reader_gives_the_folders_samples_in_its_order(folder, tmp_path, struct, hf_layout):
    root = write_parquet(folder, str(tmp_path / "pq"), rows_per_file=7, rows_per_group=3, struct=struct,
                         hf_layout=hf_layout)
    for split in ("train", "val"):
        want = open_folder(os.path.join(folder, split))
        got = open_parquet(root, split)
        assert isinstance(got, ParquetReader) and len(got) == len(want)
        assert got.classes == want.classes  # from the files' Hugging Face label names
        assert got.targets.tolist() == want.targets.tolist()
        for i in range(len(want)):
            assert got.read(i) == want.read(i)
            if struct:  # the datasets library's struct keeps the file name
                assert got.relpath(i) == want.relpath(i)
            else:  # named by its class, file and row
                cls, name = got.relpath(i).split("/")
                assert cls == want.classes[want.target(i)] and name == f"{split if split == 'train' else 'validation'}" \
                    f"-{i // 7:05d}-of-{(len(want) + 6) // 7:05d}-{i % 7:07d}.jpg"
    # rows 0-6 in file 0 (groups of 3, 3, 1), 7-13 in file 1 (3, 3, 1), row 14 in file 2
    assert open_parquet(root, "train").block_sizes == [3, 3, 1, 3, 3, 1, 1]


def test_without_label_names_classes_come_from_classes_json_or_the_indices(folder, tmp_path):
    root = write_parquet(folder, str(tmp_path / "pq"), rows_per_file=100, rows_per_group=4, hf_names=False)
    assert open_parquet(root, "train").classes == ["0", "1", "2"]
    assert open_parquet(root, "train", ["a", "b", "c"]).classes == ["a", "b", "c"]
    with pytest.raises(DatasetError) as err:
        open_parquet(root, "train", ["a", "b"])
    assert "label 2, out of range for the 2 classes" in _one_line(err)


def test_the_reader_keeps_a_bounded_cache_and_reopens_after_pickling(folder, tmp_path):
    root = write_parquet(folder, str(tmp_path / "pq"), rows_per_file=100, rows_per_group=2)
    reader = open_parquet(root, "train")
    reader.cache_groups = 2
    first = [reader.read(i) for i in range(len(reader))]
    assert len(reader._cache) == 2
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._cache == {} and clone._handles == {}
    assert [clone.read(i) for i in reversed(range(len(clone)))] == first[::-1]
    sub = reader.subset([4, 0, 9])
    assert [sub.read(i) for i in range(3)] == [first[4], first[0], first[9]]
    assert sub.targets.tolist() == reader.targets[[4, 0, 9]].tolist()


def test_format_auto_finds_parquet_and_block_order_reads_row_groups(folder, tmp_path):
    root = write_parquet(folder, str(tmp_path / "pq"), rows_per_file=100, rows_per_group=4, hf_layout=True)
    assert data_setup.resolve_format(root, "auto") == "parquet"
    cfg = load_config(None, ["data.shuffle=block", "data.block_shards=2"])
    train, val, _ = data_setup.build_datasets(cfg.data, root, lambda x: x, lambda x: x, seed=0)
    assert isinstance(train.reader, ParquetReader) and len(train) == 15 and len(val) == 6
    sampler = data_setup.build_train_sampler(cfg.data, train, 12, seed=0, num_replicas=1, rank=0)
    assert isinstance(sampler, TrainSampler) and train.reader.cache_groups == 2
    order = list(iter(sampler))
    assert order == list(iter(data_setup.build_train_sampler(cfg.data, train, 12, seed=0, num_replicas=1, rank=0)))
    blocks = train.reader.block_of[[k % len(train) for k in order]]
    sizes = train.reader.block_sizes  # [4, 4, 4, 3]
    first = list(dict.fromkeys(blocks.tolist()))[:2]  # the first window: 2 row groups, read whole before the next
    assert set(blocks[:sum(sizes[g] for g in first)].tolist()) == set(first)


def test_bad_parquet_input_is_one_line(folder, tmp_path):
    root = tmp_path / "bad"
    (root / "train").mkdir(parents=True)
    with pytest.raises(DatasetError) as err:
        open_parquet(str(root), "train")
    assert "no parquet files for the train split" in _one_line(err)
    (root / "train" / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError) as err:
        open_parquet(str(root), "train")
    assert "a.parquet' is not a readable parquet file" in _one_line(err)
    pq.write_table(pa.table({"image": pa.array([b"x"]), "class": pa.array([0])}), str(root / "train" / "a.parquet"))
    with pytest.raises(DatasetError) as err:
        open_parquet(str(root), "train")
    assert "has no 'label' column (its columns: image, class)" in _one_line(err)
    pq.write_table(pa.table({"image": pa.array([b"x"]), "label": pa.array([-1])}), str(root / "train" / "a.parquet"))
    with pytest.raises(DatasetError) as err:
        open_parquet(str(root), "train")
    assert "has the label -1" in _one_line(err) and "test split" in _one_line(err)
    pq.write_table(pa.table({"image": pa.array([None], pa.binary()), "label": pa.array([0])}),
                   str(root / "train" / "a.parquet"))
    with pytest.raises(OSError, match="no image bytes"):
        open_parquet(str(root), "train").read(0)
    with pytest.raises(Exception) as err:
        load_config(None, ["data.format=imagefolder", "data.shuffle=block"])
    assert "parquet" in _one_line(err)
