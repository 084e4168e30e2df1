"""Tests for t2t.data: folders and errors, per-sample seeding, samplers, loaders, transforms, mixup, demo data."""
from __future__ import annotations

import dataclasses
import os
import random
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageOps

from t2t.data import (
    BatchNormalizeErase,
    DatasetError,
    FastTrainTransform,
    ImageFolderDataset,
    RepeatedSample,
    ShardSampler,
    TrainSampler,
    build_eval_loader,
    build_eval_transform,
    build_mixup,
    build_train_loader,
    build_train_transform,
    check_classes_match,
    check_same_classes,
    find_split_dirs,
    find_unreadable_images,
    normalize_and_erase,
    resolve_eval_dir,
    set_loader_epoch,
)
from t2t.data.transforms import _draft_scale, eval_resize_size
from t2t.rng import reseed_step


def _noise_image(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth-ish content so JPEG round trips stay close to the source.
    coarse = rng.integers(0, 256, size=(h // 4 + 2, w // 4 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)
    return image.convert(mode) if mode != "RGB" else image


def _make_folder(root, classes=("cat", "dog", "eel"), per_class=4, size=(40, 30), ext=".jpg", seed=0) -> str:
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(per_class):
            _noise_image(*size, seed=seed + 100 * c + i).save(os.path.join(root, name, f"{i:03d}{ext}"))
    return str(root)


# ---------------------------------------------------------------------------------------------
# Evaluation transform


@pytest.mark.parametrize("img_size, resized", [(224, 248), (384, 426)])
def test_eval_transform_resizes_shorter_side_then_centre_crops(img_size, resized):
    assert eval_resize_size(img_size, 0.9) == resized
    transform = build_eval_transform(img_size)
    image = _noise_image(451, 300)
    after_resize = transform.transforms[0](image)
    assert min(after_resize.size) == resized and after_resize.size == (int(451 * resized / 300), resized)
    out = transform(image)
    assert out.shape == (3, img_size, img_size) and out.dtype == torch.float32
    # Same numbers as timm's eval pipeline with crop_pct=0.9, bicubic.
    from timm.data import create_transform

    assert torch.equal(out, create_transform(img_size, crop_pct=0.9, interpolation="bicubic")(image))


def test_eval_transform_rejects_bad_arguments():
    with pytest.raises(ValueError, match="crop_pct"):
        build_eval_transform(224, crop_pct=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        build_eval_transform(224, interpolation="cubic")


# ---------------------------------------------------------------------------------------------
# Folder layout and errors


def test_imagefolder_matches_torchvision_ordering(tmp_path):
    root = tmp_path / "data"
    for name in ["b", "A", "a_1", "10", "9", "Zeta"]:
        (root / name / "sub").mkdir(parents=True)
        for fname in ["z.jpg", "B.PNG", "a.jpeg", "notes.txt", "m.JPG"]:
            target = root / name / fname
            if fname.endswith(".txt"):
                target.write_text("not an image")
            else:
                _noise_image(8, 8).save(target, format="PNG" if fname.lower().endswith(".png") else "JPEG")
        _noise_image(8, 8).save(root / name / "sub" / "inner.jpg")
    ours = ImageFolderDataset(str(root))
    theirs = torchvision.datasets.ImageFolder(str(root))
    assert ours.classes == theirs.classes
    assert ours.class_to_idx == theirs.class_to_idx
    assert ours.samples == theirs.samples
    assert ours.targets == theirs.targets
    image, target = ours[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and target == 0


def test_missing_root_and_not_a_directory(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as e:
        ImageFolderDataset(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        ImageFolderDataset(str(f))


def test_no_class_folders(tmp_path):
    _noise_image(8, 8).save(tmp_path / "loose.jpg")  # images but no class folders
    with pytest.raises(DatasetError, match="no class folders") as e:
        ImageFolderDataset(str(tmp_path))
    assert str(tmp_path) in str(e.value)


def test_empty_class_folder_is_named(tmp_path):
    _make_folder(tmp_path, classes=("a", "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="holds no images") as e:
        ImageFolderDataset(str(tmp_path))
    assert os.path.join(str(tmp_path), "c") in str(e.value)


def test_explicit_classes_and_missing_class_folder(tmp_path):
    _make_folder(tmp_path, classes=("a", "b", "c"))
    ds = ImageFolderDataset(str(tmp_path), classes=["c", "a"])
    assert ds.classes == ["c", "a"] and set(ds.targets) == {0, 1}
    with pytest.raises(DatasetError, match="'zzz'"):
        ImageFolderDataset(str(tmp_path), classes=["a", "zzz"])


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_image_is_named_in_the_error(tmp_path, fast, corruption):
    _make_folder(tmp_path, classes=("a", "b"), per_class=3)
    bad = tmp_path / "a" / "001.jpg"
    if corruption == "garbage":
        bad.write_bytes(b"this is not a jpeg at all" * 10)
    else:
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    transform = build_train_transform(32, fast_decode=True) if fast else build_eval_transform(32)
    ds = ImageFolderDataset(str(tmp_path), transform)
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DatasetError, match="cannot read image") as e:
        ds[index]
    assert str(bad) in str(e.value) and "skip_bad_images" in str(e.value)
    ds[index + 1]  # the others still load


def test_skip_bad_images_counts_warns_and_substitutes_the_next(tmp_path, caplog):
    _make_folder(tmp_path, classes=("a", "b"), per_class=2)
    bad = tmp_path / "a" / "001.jpg"  # index 1; index 2 is b/000.jpg
    bad.write_bytes(b"\xff\xd8 broken")
    ds = ImageFolderDataset(str(tmp_path), build_eval_transform(32), skip_bad_images=True)
    with caplog.at_level("WARNING"):
        image, target = ds[1]
    assert ds.bad_images == 1
    assert str(bad) in caplog.text
    next_image, next_target = ds[2]
    assert torch.equal(image, next_image) and target == next_target == 1
    # The last image wraps round to the first.
    (tmp_path / "b" / "001.jpg").write_bytes(b"junk")
    assert torch.equal(ds[3][0], ds[0][0]) and ds.bad_images == 2


def test_every_image_bad_raises(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"junk")
    ds = ImageFolderDataset(str(tmp_path), skip_bad_images=True)
    with pytest.raises(DatasetError, match="no readable image"):
        ds[0]


def test_split_dirs_resolve_eval_dir_and_class_check(tmp_path):
    with pytest.raises(DatasetError, match="missing 'train' folder"):
        find_split_dirs(str(tmp_path))
    train = _make_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=1)
    with pytest.raises(DatasetError, match="missing 'val' folder") as e:
        find_split_dirs(str(tmp_path))
    assert os.path.join(str(tmp_path), "val") in str(e.value)
    val = _make_folder(tmp_path / "val", classes=("a", "x", "c"), per_class=1)
    assert find_split_dirs(str(tmp_path)) == (train, val)
    assert resolve_eval_dir(str(tmp_path)) == val
    assert resolve_eval_dir(val) == val
    train_ds, val_ds = ImageFolderDataset(train), ImageFolderDataset(val)
    with pytest.raises(DatasetError) as e:
        check_same_classes(train_ds, val_ds)
    message = str(e.value)
    assert train in message and val in message and "'b'" in message and "'x'" in message
    check_same_classes(train_ds, ImageFolderDataset(train))
    short = _make_folder(tmp_path / "short", classes=("a", "b"), per_class=1)
    with pytest.raises(DatasetError, match="only in the training folder \\(first: 'c'\\)"):
        check_same_classes(train_ds, ImageFolderDataset(short))


def test_class_names_are_checked_against_a_checkpoints_classes():
    check_classes_match(["a", "b", "c"], ["a", "b", "c"], where="folder 'v'")
    with pytest.raises(DatasetError, match="1 only in the checkpoint \\(first: 'b'\\); 1 only in folder 'v' "
                                           "\\(first: 'x'\\); the labels would be wrong; pass --force"):
        check_classes_match(["a", "b", "c"], ["a", "c", "x"], where="folder 'v'", fix="; pass --force")
    with pytest.raises(DatasetError, match="class #0 is 'a' in the checkpoint and 'b' in folder 'v'"):
        check_classes_match(["a", "b"], ["b", "a"], where="folder 'v'")
    with pytest.raises(DatasetError, match="the 2 classes .* \\(3 here\\)"):
        check_classes_match(["a", "b"], ["a", "b", "c"], where="folder 'v'")


def test_hidden_files_and_folders_are_not_images(tmp_path):
    root = _make_folder(tmp_path, classes=("a", "b"), per_class=2)
    for junk in ("a/._000.jpg", "a/.DS_Store.png", "b/.cache/001.jpg"):  # AppleDouble, dot-file, dot-folder
        os.makedirs(os.path.dirname(tmp_path / junk), exist_ok=True)
        (tmp_path / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
    ds = ImageFolderDataset(root, build_eval_transform(32))
    assert [os.path.relpath(p, root) for p, _ in ds.samples] == ["a/000.jpg", "a/001.jpg", "b/000.jpg", "b/001.jpg"]
    assert all(image.shape == (3, 32, 32) for image, _ in ds)


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_images_are_found_up_front(tmp_path, workers):
    root = _make_folder(tmp_path, classes=("a", "b"), per_class=3, size=(200, 150))
    good = sorted(os.path.join(root, c, f) for c in ("a", "b") for f in os.listdir(os.path.join(root, c)))
    truncated, empty, text = good[1], good[3], good[4]
    with open(truncated, "rb") as f:
        head = f.read(400)
    with open(truncated, "wb") as f:
        f.write(head)
    open(empty, "wb").close()
    with open(text, "w") as f:
        f.write("not an image")
    bad = find_unreadable_images(good, workers=workers)
    assert [p for p, _ in bad] == [truncated, empty, text]
    assert all(reason for _, reason in bad)


def test_processes_share_the_validation_check_and_agree(tmp_path, monkeypatch):
    """Each of 3 processes decodes a third of the images; the pooled findings give all the same verdict."""
    from t2t.data import setup as data_setup
    root = _make_folder(tmp_path, classes=("a", "b"), per_class=4)
    for bad in ("a/001.jpg", "b/002.jpg"):
        with open(os.path.join(root, bad), "w") as f:
            f.write("not an image")
    checked: list[list[str]] = []
    real_find = data_setup.find_unreadable_images
    monkeypatch.setattr(data_setup, "find_unreadable_images",
                        lambda paths, workers: checked.append(list(paths)) or real_find(paths, workers))
    verdicts = []
    for rank in range(3):
        ds = ImageFolderDataset(root, build_eval_transform(32), skip_bad_images=True)
        paths = [p for p, _ in ds.samples]
        # What the collective would return: every process's findings, in rank order.
        pooled = lambda mine, rank=rank, paths=paths: [  # noqa: E731
            mine if r == rank else real_find(paths[r::3], 0) for r in range(3)]
        data_setup.check_val_images(ds, workers=0, rank=rank, num_replicas=3, gather=pooled)
        verdicts.append([os.path.relpath(p, root) for p, _ in ds.samples])
    assert [len(c) for c in checked] == [3, 3, 2] and sorted(sum(checked, [])) == sorted(paths)
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert verdicts[0] == ["a/000.jpg", "a/002.jpg", "a/003.jpg", "b/000.jpg", "b/001.jpg", "b/003.jpg"]
    ds = ImageFolderDataset(root, build_eval_transform(32))  # without skip_bad_images: the first bad one, named
    with pytest.raises(DatasetError, match="a/001.jpg") as e:
        data_setup.check_val_images(ds, workers=0, rank=2, num_replicas=3, gather=lambda mine: [
            real_find([p for p, _ in ds.samples][r::3], 0) for r in range(3)])
    assert "and 1 more" in str(e.value)


# ---------------------------------------------------------------------------------------------
# Per-sample determinism


@pytest.mark.parametrize("fast", [False, True])
def test_sample_randomness_is_a_function_of_seed_epoch_index(tmp_path, fast):
    root = _make_folder(tmp_path, per_class=3, size=(48, 40))
    transform = build_train_transform(32, fast_decode=fast)
    ds = ImageFolderDataset(root, transform, seed=7)
    first = ds[4][0]
    random.random(), np.random.rand(), torch.rand(3), ds[2]  # disturb every global RNG
    assert torch.equal(ds[4][0], first)
    assert torch.equal(ImageFolderDataset(root, transform, seed=7)[4][0], first)
    assert not torch.equal(ImageFolderDataset(root, transform, seed=8)[4][0], first)
    ds.set_epoch(1)
    assert not torch.equal(ds[4][0], first)
    ds.set_epoch(0)
    assert torch.equal(ds[4][0], first)


def _epoch_batches(loader, epoch, start_sample=0):
    set_loader_epoch(loader, epoch, start_sample)
    return [(x.clone(), y.clone()) for x, y in loader]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_loader_output_independent_of_workers_epochs_and_resume_point(tmp_path):
    root = _make_folder(tmp_path, per_class=6, size=(40, 36))
    transform = build_train_transform(32, fast_decode=True)

    def make_loader(workers):
        ds = ImageFolderDataset(root, transform, seed=3)
        sampler = TrainSampler(len(ds), seed=3)
        return build_train_loader(ds, batch_size=4, sampler=sampler, workers=workers)

    serial = make_loader(0)
    reference = {epoch: _epoch_batches(serial, epoch) for epoch in (0, 1)}
    assert len(reference[0]) == 18 // 4
    assert not torch.equal(reference[0][0][0], reference[1][0][0])
    # Two persistent workers, epochs switched with set_loader_epoch (shared-memory epoch).
    parallel = make_loader(2)
    for epoch in (0, 1):
        _assert_same_batches(_epoch_batches(parallel, epoch), reference[epoch])
    # Resume inside epoch 1 after two batches, in a fresh loader with workers.
    resumed = make_loader(2)
    _assert_same_batches(_epoch_batches(resumed, 1, start_sample=2 * 4), reference[1][2:])


def test_loaders_leave_the_global_torch_rng_alone(tmp_path):
    root = _make_folder(tmp_path, per_class=2)
    ds = ImageFolderDataset(root, build_eval_transform(32))
    loader = build_eval_loader(ds, batch_size=2, workers=0)
    state = torch.get_rng_state()
    list(loader)
    train_loader = build_train_loader(ds, batch_size=2, sampler=TrainSampler(len(ds)), workers=0)
    list(train_loader)
    # The datasets reseed torch's CPU generator per sample, so compare a fresh state after reseeding.
    torch.set_rng_state(state)
    before = torch.rand(1)
    torch.set_rng_state(state)
    iter(build_eval_loader(ds, batch_size=2, workers=0))  # creating the iterator draws no base seed
    assert torch.equal(torch.rand(1), before)


# ---------------------------------------------------------------------------------------------
# Samplers


def test_train_sampler_permutation_and_epochs():
    s = TrainSampler(50, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(e0) == list(range(50)) and len(s) == 50
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(e1) == list(range(50)) and e1 != e0
    other = TrainSampler(50, seed=1)
    other.set_epoch(1)
    assert list(other) == e1
    unshuffled = TrainSampler(5, shuffle=False)
    assert list(unshuffled) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n, world", [(50, 4), (48, 4), (7, 3)])
def test_train_sampler_ranks_disjoint_equal_length(n, world):
    shards = []
    for rank in range(world):
        s = TrainSampler(n, num_replicas=world, rank=rank, seed=5)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1]) == n // world
    flat = [i for shard in shards for i in shard]
    assert len(set(flat)) == len(flat) == (n // world) * world
    # Without drop_last every image is seen and ranks stay equal (padded by wrapping).
    padded = []
    for rank in range(world):
        s = TrainSampler(n, num_replicas=world, rank=rank, seed=5, drop_last=False)
        s.set_epoch(2)
        padded.append(list(s))
        assert len(s) == len(padded[-1]) == -(-n // world)
    assert set(i for shard in padded for i in shard) == set(range(n))


def test_train_sampler_start_sample_gives_the_tail():
    for rank in range(2):
        s = TrainSampler(37, num_replicas=2, rank=rank, seed=9, repeats=3)
        s.set_epoch(4)
        full = list(s)
        for start in (0, 2, 16, 2 * len(full)):  # global positions: a multiple of the 2 ranks
            s.set_epoch(4, start_sample=start)
            assert list(s) == full[start // 2:] and len(s) == len(full) - start // 2
    with pytest.raises(ValueError, match="start_sample"):
        s.set_epoch(0, start_sample=2 * len(full) + 2)
    with pytest.raises(ValueError, match="multiple of num_replicas"):
        s.set_epoch(0, start_sample=3)


def test_train_sampler_global_batches_do_not_depend_on_the_world_size():
    """With a global batch G = W x b x accum, step t reads global positions [tG, (t+1)G) for any W."""
    n, g, b = 50, 8, 2
    epoch_samples = (n // g) * g

    def step_sets(world, start_sample=0):
        accum = g // (world * b)
        shards = []
        for rank in range(world):
            s = TrainSampler(n, num_replicas=world, rank=rank, seed=4, epoch_samples=epoch_samples)
            s.set_epoch(1, start_sample)
            shards.append(list(s))
        steps = []
        for t in range(len(shards[0]) // (b * accum)):
            steps.append(sorted(i for shard in shards for i in shard[t * b * accum:(t + 1) * b * accum]))
        return steps

    four = step_sets(4)
    assert len(four) == n // g and all(len(step) == g for step in four)
    assert step_sets(1) == step_sets(2) == four
    assert step_sets(1, start_sample=3 * g) == four[3:]  # stopped on 4 processes after 3 steps, resumed on 1
    with pytest.raises(ValueError, match="epoch_samples"):
        TrainSampler(n, num_replicas=4, epoch_samples=51)


def test_train_sampler_repeated_augmentation():
    n, world, r = 40, 4, 3
    shards = []
    for rank in range(world):
        s = TrainSampler(n, num_replicas=world, rank=rank, seed=0, repeats=r)
        s.set_epoch(0)
        shards.append(list(s))
        assert len(shards[-1]) == n // world  # an epoch is still one dataset's worth
    keys = [key for shard in shards for key in shard]
    assert all(isinstance(key, RepeatedSample) for key in keys)
    counts = np.bincount([key.index for key in keys], minlength=n)
    assert set(counts) <= {0, 1, 2, 3} and (counts == 3).sum() >= n // r - 1
    # Copies of one image go to different ranks (DeiT's RASampler layout), each with its own slot.
    for i in np.flatnonzero(counts == 3):
        assert sum(any(key.index == i for key in shard) for shard in shards) == 3
        assert sorted(key.slot for key in keys if key.index == i) == [0, 1, 2]
    single = TrainSampler(n, seed=0, repeats=r)
    single.set_epoch(0)
    order = list(single)
    assert order[0].index == order[1].index == order[2].index and len(order) == n
    assert [key.slot for key in order[:3]] == [0, 1, 2]
    plain = TrainSampler(n, seed=0)
    plain.set_epoch(0)
    assert all(type(key) is int for key in plain)  # without repeats: plain indices, seeds unchanged


def test_train_sampler_repeat_slots_survive_a_resume_on_another_world_size():
    """Each global position keeps its (index, slot) key whatever the world size and resume point."""
    n, r = 30, 3

    def global_order(world, start_sample=0):
        shards = []
        for rank in range(world):
            s = TrainSampler(n, num_replicas=world, rank=rank, seed=2, repeats=r)
            s.set_epoch(1, start_sample)
            shards.append(list(s))
        return [shards[p % world][p // world] for p in range(sum(map(len, shards)))]

    full = global_order(1)
    assert global_order(2) == global_order(3) == full
    assert global_order(2, start_sample=12) == full[12:]


@pytest.mark.parametrize("fast", [False, True], ids=["pil", "fast-decode"])
def test_repeated_copies_of_an_image_are_augmented_differently(tmp_path, fast):
    """DeiT's repeated augmentation: the r copies of one image are different crops/flips/RandAugment draws."""
    root = _make_folder(tmp_path, per_class=3, size=(64, 48))
    transform = build_train_transform(32, fast_decode=fast, auto_augment="rand-m9-mstd0.5-inc1")
    ds = ImageFolderDataset(root, transform, seed=5)
    copies = [ds[RepeatedSample(4, slot)][0] for slot in range(3)]
    assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    assert torch.equal(copies[0], ds[4][0])  # slot 0 is the unrepeated sample: old runs resume unchanged
    assert torch.equal(ds[RepeatedSample(4, 2)][0], copies[2])  # and each copy is still reproducible
    assert ds[RepeatedSample(4, 1)][1] == ds[4][1]
    with pytest.raises(IndexError, match="slot"):
        ds[RepeatedSample(4, -1)]


def test_repeated_augmentation_loader_resumes_exactly(tmp_path):
    root = _make_folder(tmp_path, per_class=6, size=(40, 36))
    transform = build_train_transform(32, fast_decode=True)

    def make_loader(workers):
        ds = ImageFolderDataset(root, transform, seed=3)
        return build_train_loader(ds, batch_size=3, sampler=TrainSampler(len(ds), seed=3, repeats=3), workers=workers)

    reference = _epoch_batches(make_loader(0), 1)
    first = reference[0][0]
    assert reference[0][1].unique().numel() == 1  # a batch of 3 holds the 3 copies of one image
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    _assert_same_batches(_epoch_batches(make_loader(2), 1, start_sample=2 * 3), reference[2:])


def test_train_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TrainSampler(0)
    with pytest.raises(ValueError):
        TrainSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="drop_last"):
        TrainSampler(3, num_replicas=4, rank=0)


@pytest.mark.parametrize("n, world", [(10, 3), (7, 4), (2, 4), (0, 2)])
def test_shard_sampler_covers_every_index_once(n, world):
    shards = [list(ShardSampler(n, world, rank)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(ShardSampler(n, world, rank)) for rank in range(world)] == [len(s) for s in shards]


def test_eval_loader_shards_without_padding(tmp_path):
    root = _make_folder(tmp_path, per_class=3)  # 9 images
    ds = ImageFolderDataset(root, build_eval_transform(32))
    seen = []
    for rank in range(2):
        loader = build_eval_loader(ds, batch_size=4, workers=0, num_replicas=2, rank=rank)
        seen.extend(t for _, y in loader for t in y.tolist())
    assert sorted(seen) == sorted(ds.targets)


# ---------------------------------------------------------------------------------------------
# Training transforms


def test_train_transform_outputs():
    image = _noise_image(60, 45)
    for fast in (False, True):
        out = build_train_transform(32, fast_decode=fast)(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        raw = build_train_transform(32, fast_decode=fast, use_prefetcher=True)(image)
        assert raw.shape == (3, 32, 32) and raw.dtype == torch.uint8
    assert isinstance(build_train_transform(32, fast_decode=True), FastTrainTransform)
    with pytest.raises(ValueError, match="interpolation"):
        build_train_transform(32, interpolation="cubic")


def test_posterize_zero_bits_gives_black_instead_of_crashing():
    # Magnitude 10 makes RandAugment's PosterizeIncreasing keep 0 bits, which recent Pillow rejects.
    from timm.data import create_transform

    image = _noise_image(40, 40)
    kwargs = dict(auto_augment="rand-m10-mstd0-inc1", re_prob=0.0, use_prefetcher=True)
    try:
        ImageOps.posterize(image, 0)
        pillow_rejects_zero_bits = False
    except ValueError:
        pillow_rejects_zero_bits = True
    if pillow_rejects_zero_bits:  # the crash the guard exists for
        stock = create_transform(32, is_training=True, **kwargs)
        with pytest.raises(ValueError, match="bits"):
            for i in range(300):
                _seeded(lambda: stock(image), i)
    for fast in (False, True):
        transform = build_train_transform(32, fast_decode=fast, **kwargs)
        outputs = [_seeded(lambda: transform(image), i) for i in range(300)]
        assert any(int(x.max()) == 0 for x in outputs) or not pillow_rejects_zero_bits  # black images occur


def _seeded(fn, seed):
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return fn()


def test_fast_transform_draws_the_same_augmentation_as_timm(tmp_path):
    from timm.data import create_transform

    path = str(tmp_path / "x.jpg")
    _noise_image(90, 70).save(path, quality=95)
    kwargs = dict(auto_augment=None, color_jitter=None, re_prob=0.0, use_prefetcher=True)
    fast = build_train_transform(48, fast_decode=True, **kwargs)
    stock = create_transform(48, is_training=True, interpolation="random", **kwargs)
    for seed in range(40):
        a = _seeded(lambda: fast(Image.open(path)), seed).int()
        b = _seeded(lambda: stock(Image.open(path).convert("RGB")), seed).int()
        assert (a - b).abs().max() <= 2 and (a - b).abs().float().mean() < 0.5  # resampling rounding only
    # With RandAugment too: same ops, tiny differences that some ops (equalize, solarize) can amplify.
    fast = build_train_transform(48, fast_decode=True, use_prefetcher=True)
    stock = build_train_transform(48, fast_decode=False, use_prefetcher=True)
    diffs = [
        (_seeded(lambda: fast(Image.open(path)), s).float() - _seeded(lambda: stock(Image.open(path).convert("RGB")), s).float())
        .abs().mean().item()
        for s in range(40)
    ]
    assert np.mean(diffs) < 1.0


def test_reduced_size_jpeg_decoding_keeps_quality(tmp_path):
    assert _draft_scale(500, 480, 224, 224) == 2
    assert _draft_scale(447, 500, 224, 224) == 1
    assert _draft_scale(300, 300, 32, 32) == 8
    path = str(tmp_path / "big.jpg")
    _noise_image(640, 480).save(path, quality=95)
    opened = Image.open(path)
    assert opened.draft("RGB", (80, 60))[1] == (0, 0, 80.0, 60.0)  # 1/8 scale decoding is available
    kwargs = dict(auto_augment=None, color_jitter=None, re_prob=0.0, use_prefetcher=True, scale=(0.6, 1.0))
    fast = build_train_transform(48, fast_decode=True, **kwargs)
    no_draft = build_train_transform(48, fast_decode=True, **kwargs)
    no_draft.draft = False
    bilinear = build_train_transform(48, fast_decode=True, **{**kwargs, "interpolation": "bilinear"})
    bilinear.draft = False
    bicubic = build_train_transform(48, fast_decode=True, **{**kwargs, "interpolation": "bicubic"})
    bicubic.draft = False
    draft_error, interpolation_spread = [], []
    for seed in range(12):
        a = _seeded(lambda: fast(Image.open(path)), seed).float()
        b = _seeded(lambda: no_draft(Image.open(path)), seed).float()
        draft_error.append((a - b).abs().mean().item())
        c = _seeded(lambda: bilinear(Image.open(path)), seed).float()
        d = _seeded(lambda: bicubic(Image.open(path)), seed).float()
        interpolation_spread.append((c - d).abs().mean().item())
    # Decoding at 1/8 .. 1/2 scale moves pixels no more than timm's own random choice of filter does
    # (on this high-frequency noise image, the hardest case).
    assert 0 < np.mean(draft_error) < 2.0 * np.mean(interpolation_spread)


def _robustness_images(root) -> str:
    """Small files in every awkward mode and shape, as a one-class folder."""
    d = os.path.join(root, "odd")
    os.makedirs(d)
    rng = np.random.default_rng(0)
    k = 0

    def save(image, ext, **kw):
        nonlocal k
        image.save(os.path.join(d, f"{k:03d}{ext}"), **kw)
        k += 1

    for w, h in [(1, 1), (1, 5), (3, 2), (8, 8), (5, 7), (2, 40), (48, 1), (200, 3), (4, 90), (48, 40), (33, 47)]:
        base = _noise_image(w, h, seed=k)
        save(base, ".jpg")
        save(base, ".png")
        save(base.convert("L"), ".jpg")
        save(base.convert("RGBA"), ".png")
        save(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), ".png")
        save(base.convert("CMYK"), ".jpg")
        save(base.convert("LA"), ".png")
        save(base.convert("1"), ".png")
        save(base.convert("L").convert("I;16"), ".png")
        save(base.convert("L").convert("F"), ".tif")
    rgba = Image.fromarray(rng.integers(0, 256, size=(30, 20, 4), dtype=np.uint8), "RGBA")
    save(rgba, ".webp")
    save(_noise_image(40, 30), ".bmp")
    p = _noise_image(20, 20).convert("P")
    p.info["transparency"] = 0
    save(p, ".png")
    return str(root)


def _run_draws(root, draws: int) -> None:
    pipelines = [
        build_train_transform(32, fast_decode=False),
        build_train_transform(32, fast_decode=True),
        build_train_transform(32, fast_decode=True, use_prefetcher=True, interpolation="bicubic"),
        build_train_transform(32, fast_decode=False, use_prefetcher=True, auto_augment="rand-m10-mstd1.0-inc1"),
    ]
    datasets = [ImageFolderDataset(root, t, seed=1) for t in pipelines]
    n = len(datasets[0])
    for draw in range(draws):
        ds = datasets[draw % len(datasets)]
        ds.set_epoch(draw // n)
        image, _ = ds[draw % n]
        assert image.shape == (3, 32, 32)


def test_augmentation_never_crashes_fast(tmp_path):
    _run_draws(_robustness_images(tmp_path), 1000)


@pytest.mark.slow
def test_augmentation_never_crashes_20k(tmp_path):
    _run_draws(_robustness_images(tmp_path), 20_000)


# ---------------------------------------------------------------------------------------------
# Device-side normalisation and erasing


def test_to_normalized_tensor_matches_totensor_normalize():
    from t2t.data.transforms import ToNormalizedTensor

    image = _noise_image(30, 20)
    reference = build_eval_transform(20, crop_pct=1.0).transforms[2:]  # ToTensor, Normalize
    expected = torchvision.transforms.Compose(reference)(image)
    out = ToNormalizedTensor()(image)
    assert out.shape == (3, 20, 30) and out.is_contiguous() and torch.allclose(out, expected, atol=1e-6)


def test_batch_normalize_erase_matches_in_worker_normalisation():
    images = [_noise_image(32, 32, seed=i) for i in range(4)]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    out = BatchNormalizeErase(re_prob=0.0)(batch)
    reference = torch.stack([build_eval_transform(32, crop_pct=1.0)(im) for im in images])
    assert out.dtype == torch.float32 and torch.allclose(out, reference, atol=1e-5)
    erased = normalize_and_erase(batch, re_prob=1.0, re_mode="pixel", device="cpu")
    assert erased.shape == batch.shape and not torch.allclose(erased, reference, atol=1e-3)
    with pytest.raises(ValueError, match="uint8"):
        BatchNormalizeErase()(batch.float())


# ---------------------------------------------------------------------------------------------
# Mixup and main-process seeding


def test_mixup_soft_targets():
    assert build_mixup(mixup_alpha=0.0, cutmix_alpha=0.0, num_classes=10) is None
    mixup = build_mixup(num_classes=10)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    mixed, soft = mixup(x.clone(), y)
    assert mixed.shape == x.shape and soft.shape == (8, 10)
    assert torch.allclose(soft.sum(1), torch.ones(8)) and soft.min() > 0  # label smoothing
    with pytest.raises(ValueError):
        build_mixup(mixup_alpha=-1.0, num_classes=10)


def test_reseed_step_makes_steps_repeatable():
    mixup = build_mixup(num_classes=5)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])

    def step(seed, step_index, rank):
        reseed_step(seed, step_index, rank)
        mixed, soft = mixup(x.clone(), y)
        return mixed, soft, torch.nn.functional.dropout(torch.ones(64), 0.5), random.random()

    a, b, c = step(42, 10, 0), step(42, 10, 0), step(42, 11, 0)
    assert all(torch.equal(p, q) for p, q in zip(a[:3], b[:3])) and a[3] == b[3]
    assert not torch.equal(a[2], c[2])


# ---------------------------------------------------------------------------------------------
# Demo data and benchmark


def test_data_benchmark_smoke(tmp_path):
    from t2t.tools.data_bench import make_benchmark_images, run_data_benchmark

    make_benchmark_images(str(tmp_path), 6, min_size=40, max_size=60)
    result = run_data_benchmark(str(tmp_path), img_size=32, num_images=6, rounds=1)
    assert result["images"] == 6
    assert result["ours_images_per_sec_per_core"] > 0 and result["timm_images_per_sec_per_core"] > 0
    assert result["speedup"] == pytest.approx(result["ours_images_per_sec_per_core"] / result["timm_images_per_sec_per_core"])


def test_uint8_validation_batches_normalised_on_the_device_give_the_same_evaluation(tmp_path):
    import timm

    import t2t  # noqa: F401  (registers the models)
    from t2t.data.loader import build_eval_loader
    from t2t.data.transforms import BatchNormalize
    from t2t.engine.evaluate import evaluate_models

    root = _make_folder(str(tmp_path), per_class=3, size=(40, 36))
    floats = ImageFolderDataset(root, build_eval_transform(32))
    uint8 = ImageFolderDataset(root, build_eval_transform(32, uint8=True))
    for i in range(len(floats)):
        assert uint8[i][0].dtype == torch.uint8
        assert torch.equal(BatchNormalize()(uint8[i][0][None])[0], floats[i][0])  # bit-identical on the CPU
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3, depth=1)
    normalize = BatchNormalize()
    a = evaluate_models({"m": model}, build_eval_loader(floats, batch_size=4, workers=0), device="cpu")
    b = evaluate_models({"m": model}, build_eval_loader(uint8, batch_size=4, workers=0), device="cpu",
                        batch_to_device=lambda x, y: (normalize(x), y))
    assert {k: v for k, v in a["m"].items() if k != "images_per_sec"} == \
        {k: v for k, v in b["m"].items() if k != "images_per_sec"}


def test_shared_memory_check_counts_both_loaders_against_free_space(monkeypatch, caplog):
    import logging

    from t2t.data import setup

    per_process = setup.shared_memory_per_process(workers=8, prefetch_factor=2, batch_size=64, eval_batch_size=100,
                                                  img_size=224, uint8_train=True, uint8_eval=False)
    image = 3 * 224 * 224
    assert per_process == 8 * 2 * 64 * image + 8 * 2 * 100 * image * 4  # float32 validation batches: 4 bytes
    assert setup.shared_memory_per_process(workers=0, prefetch_factor=2, batch_size=64, eval_batch_size=100,
                                           img_size=224, uint8_train=True, uint8_eval=True) == 0
    uint8_both = setup.shared_memory_per_process(workers=8, prefetch_factor=2, batch_size=64, eval_batch_size=100,
                                                 img_size=224, uint8_train=True, uint8_eval=True)
    assert uint8_both == 8 * 2 * (64 + 100) * image

    class StatVfs:  # a 2 GiB /dev/shm (the README's --shm-size=2g) with 1 GiB free
        f_frsize, f_blocks, f_bavail = 4096, 2 * 2**30 // 4096, 2**30 // 4096

    monkeypatch.setattr(os, "statvfs", lambda path: StatVfs)
    free = setup.free_shared_memory()
    assert free == 2**30  # the free space, not the size
    with caplog.at_level(logging.INFO, logger="t2t.data.setup"):
        assert setup.check_shared_memory(uint8_both, 8, free)  # 8 x 377 MiB > 1024 MiB free
        assert "1024 MiB free" in caplog.text and "8 processes" in caplog.text
        assert not setup.check_shared_memory(uint8_both, 1, free)


# ---------------------------------------------------------------------------------------------
# File lists: compact, listed by one rank, cached in the run folder


def test_compact_file_list_gives_the_same_samples_targets_and_order(tmp_path):
    from t2t.data.filelist import SampleList

    root = _make_folder(str(tmp_path / "data"), per_class=3)
    os.makedirs(os.path.join(root, "dog", "nested"))
    _noise_image(8, 8).save(os.path.join(root, "dog", "nested", "ü.jpg"))
    ours = ImageFolderDataset(root)
    theirs = torchvision.datasets.ImageFolder(root)
    assert isinstance(ours.samples, SampleList)
    assert list(ours.samples) == theirs.samples and ours.targets == theirs.targets
    assert ours.samples[-1] == theirs.samples[-1] and ours.samples[1:3] == theirs.samples[1:3]
    assert ours.samples.targets.dtype == np.int32 and len(ours) == len(theirs) == 10


def test_file_list_cache_is_used_until_a_folder_changes(tmp_path, monkeypatch):
    from t2t.data import filelist

    root = _make_folder(str(tmp_path / "data"), per_class=2)
    cache = str(tmp_path / "run" / "filelist-train.npz")
    os.makedirs(os.path.dirname(cache))
    first = ImageFolderDataset(root, list_cache=cache)
    assert os.path.isfile(cache)
    real = filelist.list_image_folder
    walks = []
    monkeypatch.setattr(filelist, "list_image_folder", lambda *a, **k: walks.append(1) or real(*a, **k))
    assert ImageFolderDataset(root, list_cache=cache).samples == first.samples and walks == []  # read, not walked
    added = os.path.join(root, "eel", "sub")
    os.makedirs(added)  # a new nested folder changes its parent's mtime
    _noise_image(8, 8).save(os.path.join(added, "new.jpg"))
    again = ImageFolderDataset(root, list_cache=cache)
    assert walks == [1] and len(again) == len(first) + 1
    assert again.samples == ImageFolderDataset(root).samples and len(walks) == 2  # (the second walk: no cache)
    os.remove(os.path.join(root, "cat", sorted(os.listdir(os.path.join(root, "cat")))[0]))  # a removed file
    assert len(ImageFolderDataset(root, list_cache=cache)) == len(first) and len(walks) == 3
    with open(cache, "wb") as f:  # a damaged cache is listed again, not trusted
        f.write(b"not a cache")
    assert len(ImageFolderDataset(root, list_cache=cache)) == len(first) and len(walks) == 4


def test_only_rank0_lists_and_the_others_take_its_list(tmp_path, monkeypatch):
    from t2t.config import DataConfig
    from t2t.data import filelist
    from t2t.data.setup import build_datasets

    data = tmp_path / "data"
    for split in ("train", "val"):
        _make_folder(str(data / split), per_class=2)
    cfg = DataConfig()
    sent = []
    rank0 = build_datasets(cfg, str(data), None, None, 0, rank=0, broadcast=lambda obj: sent.append(obj) or obj)
    monkeypatch.setattr(filelist, "list_image_folder", lambda *a, **k: pytest.fail("rank 1 walked the folders"))
    received = iter(sent)
    rank1 = build_datasets(cfg, str(data), None, None, 0, rank=1, broadcast=lambda obj: next(received))
    for a, b in zip(rank0[:2], rank1[:2]):
        assert a.samples == b.samples and a.classes == b.classes
    # An error on rank 0 reaches every rank instead of leaving them waiting for a list.
    monkeypatch.undo()
    (data / "val" / "eel" / "sub").mkdir()
    for image in (data / "val" / "eel").glob("*.jpg"):
        image.unlink()
    sent.clear()
    with pytest.raises(DatasetError, match="holds no images"):
        build_datasets(cfg, str(data), None, None, 0, rank=0, broadcast=lambda obj: sent.append(obj) or obj)
    with pytest.raises(DatasetError, match="holds no images"):
        build_datasets(cfg, str(data), None, None, 0, rank=1, broadcast=lambda obj: sent[-1])


# ---------------------------------------------------------------------------------------------
# Vectorised random erasing


def _erased_stats(masks: torch.Tensor) -> dict:
    """masks (N, H, W) bool: fraction of images erased, and over those the erased area, box height/width, top."""
    erased = masks.flatten(1).any(1)
    m = masks[erased]
    rows, cols = m.any(2), m.any(1)
    h, w = rows.sum(1).double(), cols.sum(1).double()
    top = rows.double().argmax(1).double()
    return {"p": erased.double().mean().item(), "area": m.flatten(1).double().mean(1).mean().item(),
            "h": h.mean().item(), "w": w.mean().item(), "top": top.mean().item(),
            "area_q": torch.quantile(m.flatten(1).double().mean(1), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))}


@pytest.mark.parametrize("max_count", [1, 3])
def test_batch_random_erasing_has_the_distribution_of_timms(max_count):
    from timm.data.random_erasing import RandomErasing

    from t2t.data.erasing import BatchRandomErasing

    N, H, W = 3000, 24, 32
    random.seed(0)
    theirs_in = torch.ones(N, 1, H, W)
    RandomErasing(0.4, mode="const", max_count=max_count, device="cpu")(theirs_in)
    torch.manual_seed(0)
    ours_in = BatchRandomErasing(0.4, mode="const", max_count=max_count)(torch.ones(N, 1, H, W))
    theirs, ours = _erased_stats(theirs_in[:, 0] == 0), _erased_stats(ours_in[:, 0] == 0)
    assert abs(ours["p"] - theirs["p"]) < 0.04 and abs(ours["p"] - 0.4) < 0.04
    for key in ("area", "h", "w", "top"):
        assert ours[key] == pytest.approx(theirs[key], rel=0.08), (key, ours, theirs)
    assert torch.allclose(ours["area_q"], theirs["area_q"], atol=0.03), (ours["area_q"], theirs["area_q"])


def test_batch_random_erasing_draws_each_image_independently():
    from t2t.data.erasing import BatchRandomErasing

    torch.manual_seed(1)
    x = BatchRandomErasing(0.5, mode="pixel", max_count=2)(torch.zeros(2000, 3, 16, 16))
    masks = x[:, 0] != 0
    erased = masks.flatten(1).any(1).double()
    both = (erased[:-1] * erased[1:]).mean().item()  # neighbours erased together: p^2 if independent
    assert abs(both - erased.mean().item() ** 2) < 0.03
    boxes = {tuple(m.flatten().nonzero().flatten().tolist()) for m in masks[erased.bool()][:200]}
    assert len(boxes) > 150  # boxes differ from image to image
    assert torch.equal(x[:, 0] != 0, x[:, 2] != 0)  # a box covers every channel
    assert x[masks[:, None].expand_as(x)].std() == pytest.approx(1.0, rel=0.1)  # per-pixel normal noise


def _serve_like_the_resource_sharer(error: BaseException, hook) -> None:
    """Raise `error` in code whose file is multiprocessing's resource_sharer.py and report it as its thread does."""
    source = ("def serve(error, hook):\n    try:\n        raise error\n    except BaseException:\n"
              "        import sys\n        hook(*sys.exc_info())\n")
    namespace = {}
    exec(compile(source, "/usr/lib/python3/multiprocessing/resource_sharer.py", "exec"), namespace)
    namespace["serve"](error, hook)


def test_loader_worker_drops_only_a_cut_transfer_of_the_resource_sharer(capsys):
    """A consumer that stopped mid-batch cuts the worker's fd transfer: no traceback for that, one for anything else."""
    from t2t.data.loader import _drop_cut_fd_transfers

    _serve_like_the_resource_sharer(ConnectionResetError(104, "Connection reset by peer"), _drop_cut_fd_transfers)
    _serve_like_the_resource_sharer(EOFError(), _drop_cut_fd_transfers)
    assert capsys.readouterr().err == ""
    _serve_like_the_resource_sharer(ValueError("a real bug"), _drop_cut_fd_transfers)
    assert "ValueError: a real bug" in capsys.readouterr().err
    try:
        raise ConnectionResetError(104, "reset elsewhere")
    except ConnectionResetError:
        _drop_cut_fd_transfers(*sys.exc_info())
    assert "reset elsewhere" in capsys.readouterr().err


def test_class_folders_named_by_index_sort_by_value(tmp_path):
    """ImageNet-V2 names its class folders '0' ... '999': folder k is class k, not the k-th string in order."""
    from t2t.data.dataset import find_classes
    for name in ("0", "1", "2", "10", "11", "9"):
        os.makedirs(tmp_path / "v2" / name)
        Image.new("RGB", (8, 8), (int(name) * 20, 0, 0)).save(tmp_path / "v2" / name / "a.png")
    assert find_classes(str(tmp_path / "v2")) == ["0", "1", "2", "9", "10", "11"]
    ds = ImageFolderDataset(str(tmp_path / "v2"))
    assert [(os.path.basename(os.path.dirname(p)), t) for p, t in ds.samples] == [
        ("0", 0), ("1", 1), ("2", 2), ("9", 3), ("10", 4), ("11", 5)]
    for name in ("b10", "b9", "b2"):  # any other name sorts as a string, as torchvision's ImageFolder does
        os.makedirs(tmp_path / "named" / name)
    assert find_classes(str(tmp_path / "named")) == ["b10", "b2", "b9"]
    os.makedirs(tmp_path / "v2" / "09")
    with pytest.raises(DatasetError, match=r"'09' and '9' name the same index"):
        find_classes(str(tmp_path / "v2"))


def test_simple_random_crop_with_3_augment(tmp_path):
    """data.train_transform=src with data.auto_augment=3a (DeiT III): the whole picture resized, padded by
    reflection and cropped (at most 4 px off), flipped; then one of greyscale, solarize and blur, colour jitter."""
    from t2t.config import load_config
    from t2t.data.setup import build_train_tf
    from timm.data.auto_augment import AutoAugment
    cfg = load_config(None, ["data.train_transform=src", "data.auto_augment=3a", "data.color_jitter=0.3",
                             "data.interpolation=bicubic", "data.reprob=0"]).data
    tf = build_train_tf(cfg, 32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:3] == ["Resize", "RandomCrop", "RandomHorizontalFlip"] and tf.transforms[1].padding_mode == "reflect"
    colour = [type(t).__name__ for t in tf.transforms[3].transforms]
    assert any(isinstance(t, AutoAugment) for t in tf.transforms[3].transforms) and "ColorJitter" in colour
    ops = {op.name for policy in next(t for t in tf.transforms[3].transforms if isinstance(t, AutoAugment)).policy
           for op in policy}
    assert ops == {"Desaturate", "Solarize", "GaussianBlurRand"}  # timm's 3-Augment
    # A picture whose left half is black and right half white: the crop moves it by at most 4 px.
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, 32:] = 255
    plain = build_train_tf(dataclasses.replace(cfg, auto_augment=None, color_jitter=0.0, hflip=0.0), 32)
    for seed in range(5):
        torch.manual_seed(seed)
        random.seed(seed)
        out = plain(Image.fromarray(pixels))
        assert out.shape == (3, 32, 32)
        edge = int((out[0, 16] > 0).float().argmax())  # first white column
        assert 12 <= edge <= 20
    with pytest.raises(Exception, match="interpolation='random' is for data.train_transform=imagenet"):
        build_train_tf(dataclasses.replace(cfg, interpolation="random"), 32)
