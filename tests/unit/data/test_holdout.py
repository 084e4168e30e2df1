"""data.holdout_fraction: a minival held out of the training folder by each image's path."""
import os
import random

import pytest

from t2t.config import Config, ConfigError, load_config, validate
from t2t.data.dataset import DatasetError, ImageFolderDataset
from t2t.data.holdout import holdout_positions, is_held_out, split_minival
from t2t.data.setup import DataSpec, build_train_and_val
from t2t.engine.plan import RunPlan
from t2t.engine.run_folder import RunError
from train_helpers import make_data


def test_the_split_depends_on_the_path_only():
    paths = [f"n{c:08d}/img_{i}.JPEG" for c in range(20) for i in range(50)]
    keep, held = holdout_positions(paths, 0.1)
    held_paths = {paths[i] for i in held}
    assert sorted(keep + held) == list(range(len(paths)))
    assert 50 <= len(held_paths) <= 150  # about a tenth of 1000
    shuffled = paths[:]
    random.Random(0).shuffle(shuffled)
    assert {shuffled[i] for i in holdout_positions(shuffled, 0.1)[1]} == held_paths
    # A larger fraction keeps every image a smaller one held out (the same hash, a higher threshold).
    assert held_paths <= {paths[i] for i in holdout_positions(paths, 0.3)[1]}
    assert is_held_out("a/b.jpg", 0.5) == is_held_out("a" + os.sep + "b.jpg", 0.5)
    assert holdout_positions(paths, 0.0)[1] == []


def test_split_minival_moves_the_held_out_images(tmp_path):
    data = make_data(str(tmp_path / "d"), classes=3, train=12, val=2, size=16)
    train = ImageFolderDataset(os.path.join(data, "train"))
    paths = [p for p, _ in train.samples]
    minival = split_minival(train, 0.25, transform=None)
    kept, held = [p for p, _ in train.samples], [p for p, _ in minival.samples]
    assert sorted(kept + held) == sorted(paths) and not set(kept) & set(held) and held
    assert all(is_held_out(os.path.relpath(p, train.root), 0.25) for p in held)
    assert minival.classes == train.classes and len(train) == len(kept)
    with pytest.raises(DatasetError, match="holds out every image of class"):
        split_minival(ImageFolderDataset(os.path.join(data, "train")), 0.999999, transform=None)


def test_the_holdout_never_reaches_the_sampler_on_two_ranks(tmp_path):
    data = make_data(str(tmp_path / "d"), classes=3, train=12, val=2, size=16)
    cfg = load_config(None, ["data.workers=0", "data.auto_augment=null", "data.holdout_fraction=0.25",
                             "model.img_size=16", "train.seed=3", "train.batch_size=2", "eval.batch_size=4"])
    spec = DataSpec.from_config(cfg, global_batch_size=4, eval_crop_pct=0.9, eval_interpolation="bicubic")
    ranks = [build_train_and_val(spec, data, num_replicas=2, rank=rank) for rank in (0, 1)]
    train_ds = ImageFolderDataset(os.path.join(data, "train"))
    held = {p for p, _ in train_ds.samples if is_held_out(os.path.relpath(p, train_ds.root), 0.25)}
    assert 0 < len(held) < len(train_ds)
    trained, minival = [], []
    for d in ranks:
        assert d.minival_len == len(held) and d.train_len == len(train_ds) - len(held)
        samples = d.train_loader.dataset.samples
        d.train_batches(epoch=0)
        trained += [samples[i][0] for i in d.train_loader.sampler]  # a whole epoch of this rank
        minival += [d.minival_loader.dataset.samples[i][0] for i in d.minival_loader.sampler]
    assert not set(trained) & held
    assert len(trained) == ranks[0].steps_per_epoch * 4 == len(set(trained))
    assert sorted(minival) == sorted(held)  # the two ranks' minival shards: each held-out image once


def test_a_resume_keeps_the_fraction():
    def plan(fraction):
        cfg = Config()
        cfg.data.holdout_fraction = fraction
        return RunPlan.build(cfg, world_size=1, steps_per_epoch=10, classes=["a", "b"], data_dir="/d",
                             minival_images=5 if fraction else 0)
    plan(0.01).check_resume(plan(0.01), path="last.pth", train_dir="/d/train")
    with pytest.raises(RunError, match="data.holdout_fraction=0.01; this launch asks for 0.02"):
        plan(0.02).check_resume(plan(0.01), path="last.pth", train_dir="/d/train")
    with pytest.raises(RunError, match="holdout_fraction=0; this launch asks for 0.01"):
        plan(0.01).check_resume(RunPlan.from_dict({**plan(0).to_dict(), "holdout_fraction": None}),
                                path="last.pth", train_dir="/d/train")


def test_minival_metric_needs_a_minival():
    cfg = Config()
    cfg.eval.metric = "minival_top1"
    with pytest.raises(ConfigError, match="needs a minival"):
        validate(cfg)
    cfg.data.holdout_fraction = 0.02
    validate(cfg)
    cfg.data.holdout_fraction = 1.0
    with pytest.raises(ConfigError, match="holdout_fraction"):
        validate(cfg)


@pytest.mark.parametrize("overrides, match", [
    (["data.format=shards"], "data.holdout_fraction=0.1 with data.format=shards"),
    (["data.format=cifar"], "data.holdout_fraction=0.1 with data.format=cifar"),
    (["token_label.dir=/labels"], "token_label.dir='/labels' with data.holdout_fraction=0.1"),
])
def test_a_minival_needs_a_class_folder_read_without_label_maps(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["data.holdout_fraction=0.1", *overrides])
