"""data.backend=dali: order, randomness, labels, bad files and statistics against the Pillow backend (CPU operators)."""
from __future__ import annotations

import importlib.util
import math
import os
import random
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from t2t.config import ConfigError, load_config
from t2t.data import dali as dali_backend
from t2t.data.dataset import DatasetError, ImageFolderDataset
from t2t.data.sampler import TrainSampler
from t2t.data.setup import DataSpec, build_train_and_val
from t2t.models.factory import resolve_eval_preprocessing
from t2t.rng import SEED_STREAM_SAMPLE, derive_seed, seed_global_rngs
from train_helpers import make_colour_dataset, make_data

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason='NVIDIA DALI is not installed (pip install -e ".[dali]")')


def _build(cfg, data_dir, *, batch_size=8, eval_batch_size=4, num_replicas=1, rank=0):
    pre = resolve_eval_preprocessing(cfg.model.name, img_size=cfg.model.img_size, crop_pct=cfg.eval.crop_pct,
                                     interpolation=cfg.eval.interpolation)
    cfg.eval.batch_size = eval_batch_size
    spec = DataSpec.from_config(cfg, batch_size=batch_size, global_batch_size=batch_size * num_replicas,
                                eval_crop_pct=pre.crop_pct, eval_interpolation=pre.interpolation)
    return build_train_and_val(spec, data_dir, num_replicas=num_replicas, rank=rank)


# ---------------------------------------------------------------------------------------------
# Config and a missing DALI: no DALI needed


def test_policy_strings():
    p = dali_backend.parse_rand_policy("rand-m9-mstd0.5-inc1")
    assert (p.n, p.m, p.mstd, p.inc, p.p) == (2, 9.0, 0.5, True, 0.5)
    assert dali_backend.parse_rand_policy("rand-m7-n3") == dali_backend.RandPolicy(n=3, m=7.0)
    assert dali_backend.parse_rand_policy(None) is None
    for bad in ("augmix-m5-w3", "v0", "rand-m9-w0", "rand-m9-mstd101"):
        with pytest.raises(ValueError):
            dali_backend.parse_rand_policy(bad)


def test_config_refuses_what_dali_cannot_express():
    assert load_config(None, ["data.backend=dali"]).data.backend == "dali"  # no DALI import at config load
    with pytest.raises(ConfigError, match=r"data.auto_augment='augmix-m5-w3' with data.backend=dali"):
        load_config(None, ["data.backend=dali", "data.auto_augment=augmix-m5-w3"])
    with pytest.raises(ConfigError, match="data.backend"):
        load_config(None, ["data.backend=tf"])
    with pytest.raises(ConfigError, match="data.interpolation='nearest' with data.backend=dali"):
        load_config(None, ["data.backend=dali", "data.interpolation=nearest"])
    with pytest.raises(ConfigError, match="train_transform"):
        load_config(None, ["data.backend=dali", "data.train_transform=cifar", "data.auto_augment=null"])


def test_missing_dali_is_one_line(tmp_path, monkeypatch):
    data_dir = make_data(str(tmp_path / "data"))
    for name in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # `import nvidia.dali` now raises ImportError
    cfg = load_config(None, ["data.backend=dali", "model.img_size=32", "data.workers=0"])
    with pytest.raises(dali_backend.DaliMissingError) as info:
        _build(cfg, data_dir)
    message = str(info.value)
    assert "\n" not in message and 'pip install -e ".[dali]"' in message and "nvidia-dali-cuda130" in message
    # and the Pillow backend does not need DALI
    assert next(iter(_build(load_config(None, ["model.img_size=32", "data.workers=0"]), data_dir).train_batches(0)))[0].shape[0] == 8


# ---------------------------------------------------------------------------------------------
# The draws follow the Pillow backend's random streams


def _pillow_draws(seed, width, height, *, scale, ratio, policy, img_size):
    """What the Pillow backend draws for a sample with this seed: crop box, interpolation index, flip, RandAugment."""
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation

    ra = rand_augment_transform(policy, dict(translate_const=int(img_size * 0.45), img_mean=(124, 116, 104)))
    seen = []
    for op in ra.ops:
        op.aug_fn = (lambda name: lambda img, *args, **kw: (seen.append((name, args, kw)), img)[1])(op.name)
    seed_global_rngs(seed)
    img = Image.new("RGB", (width, height))
    i, j, h, w = RandomResizedCropAndInterpolation.get_params(img, scale, ratio)
    interp = random.choice((0, 1))
    flip = int(torch.rand(1) < 0.5)
    before = len(seen)
    for op in np.random.choice(ra.ops, ra.num_layers, replace=True):
        n = len(seen)
        op(img)
        if len(seen) == n:
            seen.append((op.name, None, {}))
        elif op.name in dali_backend._GEOMETRIC:  # the resample choice happens inside the op
            random.choice((0, 1))
    return (j, i, max(w, 1), max(h, 1)), interp, flip, seen[before:]


def test_draws_match_the_pillow_backend():
    policy = "rand-m9-mstd0.5-inc1"
    planner = dali_backend.SamplePlanner(224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                                         interpolation="random", policy=dali_backend.parse_rand_policy(policy),
                                         color_jitter=0.4)
    names_seen = set()
    for k in range(300):
        seed = derive_seed(SEED_STREAM_SAMPLE, 42, k % 3, k)
        width, height = (500, 375) if k % 2 else (333, 500)
        box, interp, flip, ops = _pillow_draws(seed, width, height, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                               policy=policy, img_size=224)
        draw = planner.draw(seed, width, height)
        assert draw.box == box and draw.flip == flip
        assert draw.interp == planner.interps[interp]
        assert [name for name, _ in draw.op_args] == [name for name, _, _ in ops]
        for (name, arg), (_, args, _) in zip(draw.op_args, ops):
            names_seen.add(name)
            if arg is None or args is None:
                assert arg is None and args is None, name
            elif args:
                assert arg == pytest.approx(float(args[0]), abs=1e-9), name
    assert len(names_seen) == len(dali_backend.RAND_INC_OPS)


def test_draws_do_not_depend_on_threads_or_on_earlier_draws():
    """The planner reseeds one NumPy generator per thread: draws in any interleaving, from any thread, are
    the ones a fresh generator gives (the loader draws a batch's samples on its threads)."""
    from concurrent.futures import ThreadPoolExecutor

    planner = dali_backend.SamplePlanner(64, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
                                         interpolation="random",
                                         policy=dali_backend.parse_rand_policy("rand-m9-n3-mstd0.5-inc1"),
                                         color_jitter=0.0)
    seeds = [derive_seed(SEED_STREAM_SAMPLE, 7, 0, k) for k in range(200)]
    fresh = [np.random.RandomState(seed >> 32).choice(15, 3, replace=True).tolist() for seed in seeds]
    ops = dali_backend.RAND_INC_OPS
    serial = [[ops.index(name) for name, _ in planner.draw(seed, 300, 200).op_args] for seed in seeds]
    assert serial == fresh
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda seed: planner.draw(seed, 300, 200), reversed(seeds)))[::-1]
    assert [d.op_args for d in threaded] == [planner.draw(seed, 300, 200).op_args for seed in seeds]


# ---------------------------------------------------------------------------------------------
# Pipelines (DALI's CPU operators)


@needs_dali
def test_label_alignment_repeats_and_partial_eval_batch(tmp_path):
    data_dir = make_colour_dataset(str(tmp_path / "data"))
    cfg = load_config(None, ["data.backend=dali", "model.img_size=32", "data.auto_augment=null", "data.workers=2",
                             "data.color_jitter=0", "data.repeated_aug=true", "data.scale=[0.3, 1.0]"])
    data = _build(cfg, data_dir, batch_size=4)
    assert data.feed.train_images is not None
    seen = 0
    for epoch in range(2):
        for images, targets in data.train_batches(epoch):
            assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
            colour = images.float().mean(dim=(2, 3)).argmax(dim=1)
            assert torch.equal(colour, targets)
            seen += len(targets)
    assert seen == 2 * 16  # 18 images // global batch 4 = 4 steps per epoch
    val = data.val_loader
    sizes, found = [], []
    for images, targets in val:
        assert images.dtype == torch.float32
        sizes.append(len(targets))
        found += targets.tolist()
        assert torch.equal(images.mean(dim=(2, 3)).argmax(dim=1), targets)
    assert sizes == [4, 4, 1] and len(val) == 3 and found == sorted(found)


@pytest.mark.slow  # three DALI loaders built (3 s)
@needs_dali
def test_order_follows_the_sampler_and_resume_inside_an_epoch(tmp_path):
    data_dir = make_data(str(tmp_path / "data"), train=8)  # 24 images
    cfg = load_config(None, ["data.backend=dali", "model.img_size=32", "data.workers=1"])
    data = _build(cfg, data_dir, batch_size=4)
    full = list(data.train_batches(1))
    assert len(full) == 6
    # the targets are the sampler's order
    sampler = TrainSampler(24, seed=cfg.train.seed, epoch_samples=24)
    sampler.set_epoch(1)
    targets = [data.train_loader.dataset.samples[i][1] for i in sampler]
    assert torch.cat([t for _, t in full]).tolist() == targets
    # a resume from sample 8 gives the same batches; more threads change nothing
    cfg3 = load_config(None, ["data.backend=dali", "model.img_size=32", "data.workers=3"])
    tail = list(_build(cfg3, data_dir, batch_size=4).train_batches(1, start_sample=8))
    assert len(tail) == 4
    for (a, ta), (b, tb) in zip(full[2:], tail):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    # the loader produces batches ahead of the consumer: stopping after two batches (with the third
    # already produced or being produced) and resuming at sample 8 on the same loader loses nothing
    # and repeats nothing, and an abandoned iteration does not disturb the next one
    stopped = iter(data.train_batches(1))
    first_two = [next(stopped) for _ in range(2)]
    abandoned = iter(data.train_batches(1))
    next(abandoned)  # left suspended with batches in flight
    resumed = list(data.train_batches(1, start_sample=8))
    stopped.close()
    for (a, ta), (b, tb) in zip(full, first_two + resumed, strict=True):
        assert torch.equal(a, b) and torch.equal(ta, tb)
    del abandoned
    # another epoch, another augmentation
    assert not torch.equal(full[0][0], next(iter(data.train_batches(2)))[0])


@pytest.mark.slow  # three DALI loaders built (2.5 s)
@needs_dali
def test_two_ranks_share_the_global_order(tmp_path):
    data_dir = make_data(str(tmp_path / "data"), train=8)
    cfg = load_config(None, ["data.backend=dali", "model.img_size=32", "data.workers=1"])
    single = torch.cat([x for x, _ in _build(cfg, data_dir, batch_size=4).train_batches(0)])
    ranks = [torch.cat([x for x, _ in _build(cfg, data_dir, batch_size=2, num_replicas=2, rank=r).train_batches(0)])
             for r in range(2)]
    interleaved = torch.stack(ranks, dim=1).flatten(0, 1)  # rank k holds global positions k, k + 2, ...
    assert torch.equal(interleaved, single)


@needs_dali
def test_odd_images_decode(tmp_path):
    """CMYK and greyscale JPEGs, PNGs (RGBA, palette, greyscale) and 1-3 px images."""
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("x", "y"):
            folder = root / split / c
            folder.mkdir(parents=True)
            rgb = Image.fromarray(rng.integers(0, 255, (37, 51, 3), dtype=np.uint8))
            rgb.convert("CMYK").save(folder / "cmyk.jpg")
            rgb.convert("L").save(folder / "grey.jpg")
            rgb.convert("RGBA").save(folder / "rgba.png")
            rgb.convert("P").save(folder / "palette.png")
            rgb.convert("L").save(folder / "grey.png")
            Image.new("RGB", (1, 1), (10, 200, 30)).save(folder / "one.jpg")
            Image.new("RGB", (3, 2), (10, 200, 30)).save(folder / "tiny.png")
            rgb.save(folder / "plain.jpg")
    cfg = load_config(None, ["data.backend=dali", "model.img_size=32", "data.workers=2"])
    data = _build(cfg, str(root), batch_size=8)
    for images, targets in data.train_batches(0):
        assert images.shape == (8, 3, 32, 32)
    assert sum(len(t) for _, t in data.val_loader) == 16
    grey = ImageFolderDataset(str(root / "val")).samples.index((str(root / "val" / "x" / "grey.jpg"), 0))
    images = torch.cat([x for x, _ in data.val_loader])
    assert torch.allclose(images[grey, 0] * 0.229 + 0.485, images[grey, 1] * 0.224 + 0.456, atol=1e-4)


def _bad_dataset(root, bad):
    make_data(str(root), train=4)
    for name, content in bad.items():
        with open(os.path.join(root, "train", sorted(os.listdir(os.path.join(root, "train")))[0], name), "wb") as f:
            f.write(content)
    return str(root)


def _truncated_jpeg() -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


@needs_dali
@pytest.mark.slow  # a DALI plan worker started twice (about 10 s)
@pytest.mark.parametrize("kind", ["truncated", "not-an-image"])
def test_bad_file_same_error_as_pillow_or_skipped(tmp_path, kind):
    content = _truncated_jpeg() if kind == "truncated" else b"<html>not a picture</html>"
    data_dir = _bad_dataset(tmp_path / "data", {"000_bad.jpg": content})
    bad_path = [p for p, _ in ImageFolderDataset(os.path.join(data_dir, "train")).samples if "000_bad" in p][0]
    messages = {}
    for backend in ("pil", "dali"):
        cfg = load_config(None, [f"data.backend={backend}", "model.img_size=32", "data.workers=0",
                                 "train.seed=3"])
        data = _build(cfg, data_dir, batch_size=13)  # one batch: every image of the epoch
        with pytest.raises(DatasetError) as info:
            list(data.train_batches(0))
        messages[backend] = str(info.value)
    for message in messages.values():
        assert message.startswith(f"cannot read image {bad_path!r}: ") and "\n" not in message
        assert "data.skip_bad_images=true" in message
    cfg = load_config(None, ["data.backend=dali", "model.img_size=32", "data.skip_bad_images=true", "data.workers=1"])
    data = _build(cfg, data_dir, batch_size=13)
    batches = list(data.train_batches(0))
    assert [len(t) for _, t in batches] == [13] and data.train_loader.dataset.bad_images == 1


# ---------------------------------------------------------------------------------------------
# Statistics against the Pillow backend


def _within(a: np.ndarray, b: np.ndarray, sigmas: float = 4.0) -> tuple[float, float]:
    """(|mean difference|, allowed): `sigmas` standard errors of the difference of two independent means."""
    return abs(a.mean() - b.mean()), sigmas * math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))


@needs_dali
@pytest.mark.slow
def test_statistics_agree_with_the_pillow_backend(tmp_path):
    from t2t.tools.data_bench import augmentation_statistics, make_benchmark_images

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=48, seed=1)
    stats = augmentation_statistics(folder, img_size=96, epochs=3)
    pil, dali = stats["pil"], stats["dali"]
    for key in ("area_fraction", "log_aspect", "flip"):
        diff, allowed = _within(pil["draws"][key], dali["draws"][key])
        assert diff <= allowed, (key, diff, allowed)
    for c in range(3):  # per-channel mean and std of the output images
        for key in ("channel_mean", "channel_std"):
            diff, allowed = _within(pil["images"][key][:, c], dali["images"][key][:, c])
            assert diff <= allowed, (key, c, diff, allowed)


# ---------------------------------------------------------------------------------------------
# Training runs


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")))


# ---------------------------------------------------------------------------------------------
# Evaluation: the same images as the Pillow transform, up to resampling; validate.py --data-backend


@needs_dali
@pytest.mark.slow  # a DALI eval worker started (about 10 s)
def test_eval_images_match_the_pillow_transform(tmp_path):
    from t2t.data.transforms import build_eval_transform
    from t2t.tools.data_bench import make_benchmark_images

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=6, seed=2)
    dataset = ImageFolderDataset(folder, build_eval_transform(64, 0.875, "bicubic"))
    loader = dali_backend.DaliEvalLoader(dataset, img_size=64, crop_pct=0.875, interpolation="bicubic",
                                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), batch_size=4,
                                         workers=1)
    ours = torch.cat([x for x, _ in loader])
    pillow = torch.stack([dataset[i][0] for i in range(len(dataset))])
    assert ours.shape == pillow.shape == (6, 3, 64, 64)
    # the same resized size and crop window; the cubic filters differ by rounding only
    assert (ours - pillow).abs().mean() < 0.01  # normalised units: 0.01 x 0.226 x 255 = 0.6 levels


@needs_dali
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random"])
def test_training_crops_match_the_pillow_backend_pixel_for_pixel(tmp_path, interpolation):
    """DALI's resize graph (the one a GPU runs, here on the CPU): without RandAugment both backends crop the same
    box, pick the same filter and flip the same way: only resampling differs ("random" mixes both filters in one
    batch, which DALI resizes in two parts)."""
    from t2t.data.transforms import build_train_transform
    from t2t.tools.data_bench import _augment_kwargs, _dali_loader, make_benchmark_images

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=6, seed=2)
    aug = dict(_augment_kwargs("crop", None), interpolation=interpolation)
    loader = _dali_loader(folder, 64, aug, batch_size=6, seed=5, threads=1, count=6)
    assert loader.resize_in_dali is False  # the CPU default: switch to the GPU's graph
    loader.resize_in_dali = True
    pillow = ImageFolderDataset(folder, build_train_transform(64, fast_decode=True, use_prefetcher=True, re_prob=0.0,
                                                              **aug), seed=5)
    for epoch in (0, 1):
        loader.dataset.set_epoch(epoch)
        pillow.set_epoch(epoch)
        ours = next(iter(loader))[0].float()
        theirs = torch.stack([pillow[i][0] for i in range(6)]).float()
        per_image = (ours - theirs).abs().mean(dim=(1, 2, 3))
        assert per_image.max() < 2.0, per_image  # uint8 levels; a flip or another image gives 45-65


@needs_dali
def test_random_interpolation_resizes_each_sample_with_its_drawn_filter(tmp_path):
    """interpolation=random splits the batch by the drawn filter in DALI's resize graph (the GPU's, here run on
    the CPU): each image equals the one-filter pipeline's."""
    from t2t.tools.data_bench import _augment_kwargs, _dali_loader, make_benchmark_images

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=8, min_size=60, max_size=120, seed=3)
    batches, loaders = {}, {}
    for interpolation in ("random", "bilinear", "bicubic"):
        aug = dict(_augment_kwargs("crop", None), interpolation=interpolation)
        loaders[interpolation] = _dali_loader(folder, 48, aug, batch_size=8, seed=5, threads=1, count=8)
        loaders[interpolation].resize_in_dali = True
        batches[interpolation] = next(iter(loaders[interpolation]))[0]
    loader = loaders["random"]
    drawn = []
    for key in range(8):
        index, seed = dali_backend.sample_seed(loader.dataset, 0, key)
        _, width, height = dali_backend.read_image(loader.dataset.samples[index][0])
        drawn.append(loader.planner.draw(seed, width, height).interp)
    assert set(drawn) == {dali_backend.INTERP_LINEAR, dali_backend.INTERP_CUBIC}  # both parts of the split occur
    for i, interp in enumerate(drawn):
        same = "bilinear" if interp == dali_backend.INTERP_LINEAR else "bicubic"
        other = "bicubic" if same == "bilinear" else "bilinear"
        assert torch.equal(batches["random"][i], batches[same][i]), (i, same)
        assert not torch.equal(batches["random"][i], batches[other][i]), (i, other)
    # and the filters are the ones named: antialiased cubic keeps more detail than linear on every image
    def detail(images):
        return (images[..., 1:].float() - images[..., :-1].float()).abs().mean(dim=(1, 2, 3))

    assert (detail(batches["bicubic"]) > detail(batches["bilinear"])).all()


@needs_dali
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "random"])
def test_cpu_path_crops_equal_the_pillow_backend(tmp_path, interpolation):
    """On the CPU, DALI decodes the crop window and torch resizes it with the Pillow backend's kernel and the
    sample's drawn filter, then flips: the images equal the Pillow backend's when it decodes at full size, and
    differ only by its reduced-size JPEG decode otherwise."""
    from t2t.data.transforms import build_train_transform
    from t2t.tools.data_bench import _augment_kwargs, _dali_loader, make_benchmark_images

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=8, seed=2)
    aug = dict(_augment_kwargs("crop", None), interpolation=interpolation)
    loader = _dali_loader(folder, 64, aug, batch_size=8, seed=5, threads=2, count=8)
    assert loader.resize_in_dali is False and loader.device_id is None
    full_size = build_train_transform(64, fast_decode=True, use_prefetcher=True, re_prob=0.0, **aug)
    full_size.draft = False
    pillow = {draft: ImageFolderDataset(folder, transform, seed=5) for draft, transform in (
        (False, full_size), (True, build_train_transform(64, fast_decode=True, use_prefetcher=True, re_prob=0.0,
                                                         **aug)))}
    flips = []
    for epoch in (0, 1):
        loader.dataset.set_epoch(epoch)
        ours = next(iter(loader))[0]
        assert ours.shape == (8, 3, 64, 64) and ours.dtype == torch.uint8
        for draft, dataset in pillow.items():
            dataset.set_epoch(epoch)
            theirs = torch.stack([dataset[i][0] for i in range(8)])
            if not draft:
                assert torch.equal(ours, theirs), (ours.float() - theirs.float()).abs().amax(dim=(1, 2, 3))
            else:  # libjpeg's DCT-domain downscale against decode + antialiased resize
                per_image = (ours.float() - theirs.float()).abs().mean(dim=(1, 2, 3))
                assert per_image.max() < 1.5, per_image  # a flip or another image gives 45-65
        for key in range(8):
            index, seed = dali_backend.sample_seed(loader.dataset, epoch, key)
            _, width, height = dali_backend.read_image(loader.dataset.samples[index][0])
            flips.append(loader.planner.draw(seed, width, height).flip)
    assert 0 < sum(flips) < len(flips)  # both flipped and unflipped samples were compared


@pytest.mark.slow  # DALI pipelines with RandAugment (2 s)
@needs_dali
def test_cpu_path_runs_randaugment_on_the_resized_images(tmp_path):
    """With RandAugment the resized batch goes through DALI's augmentation graph: the images are close to the
    ones of DALI's all-in-one graph (which differs by its resize only) and far from the crop-only ones."""
    from t2t.tools.data_bench import _augment_kwargs, _dali_loader, make_benchmark_images

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=8, seed=4)
    batches = {}
    for name, augment, in_dali in (("cpu", "full", False), ("graph", "full", True), ("crop", "crop", False)):
        loader = _dali_loader(folder, 64, _augment_kwargs(augment, "rand-m9-mstd0.5-inc1"), batch_size=8, seed=5,
                              threads=1, count=8)
        loader.resize_in_dali = in_dali
        batches[name] = next(iter(loader))[0].float()
    assert batches["cpu"].shape == (8, 3, 64, 64)
    close = (batches["cpu"] - batches["graph"]).abs().mean(dim=(1, 2, 3))
    changed = (batches["cpu"] - batches["crop"]).abs().mean(dim=(1, 2, 3))
    assert close.max() < 2.0, close
    assert changed.mean() > 5.0, changed


def test_torch_resize_is_refused_on_a_gpu_pipeline():
    with pytest.raises(ValueError, match="resize_in_dali=False resizes on the host"):
        dali_backend.DaliTrainLoader(None, None, None, batch_size=2, workers=1, device=torch.device("cuda:0"),
                                     resize_in_dali=False)


def test_sample_seeds_are_the_pillow_datasets(tmp_path):
    """Every sampler key (plain index, or RepeatedSample copy) gets the seed SeededDataset.reseed gives it."""
    from t2t.data.dataset import RepeatedSample

    dataset = ImageFolderDataset(make_data(str(tmp_path / "data"), train=2) + "/train", seed=7)
    dataset.set_epoch(3)
    sampler = TrainSampler(len(dataset), seed=7, repeats=3)
    sampler.set_epoch(3)
    keys = list(sampler)
    assert any(isinstance(k, RepeatedSample) and k.slot > 0 for k in keys)
    seeds = set()
    for key in keys + [0, 5]:
        index, slot = dataset.check_index(key)
        dataset.reseed(index, slot)
        expected = random.random()
        found_index, seed = dali_backend.sample_seed(dataset, 3, key)
        assert found_index == index and random.Random(seed).random() == expected
        seeds.add(seed)
    assert len(seeds) == len(set(keys) | {0, 5})  # the copies of an image are seeded apart


@needs_dali
def test_backend_benchmark_reports_every_backend(tmp_path):
    from t2t.tools.data_bench import make_benchmark_images, run_backend_benchmark

    folder = make_benchmark_images(str(tmp_path / "photos"), num_images=6, min_size=40, max_size=60)
    for augment in ("crop", "full"):
        results = run_backend_benchmark(folder, ("pil", "dali", "timm"), augment=augment, img_size=32,
                                        num_images=6, rounds=1)
        assert results["augment"] == augment and results["images"] == 6
        for backend in ("pil", "dali", "timm"):
            assert results[f"{backend}_images_per_sec_per_core"] > 0
            assert results[f"{backend}_cpu_ms_per_image"] == pytest.approx(
                1000 / results[f"{backend}_images_per_sec_per_core"])
    with pytest.raises(ValueError, match="unknown data backend 'tf'"):
        run_backend_benchmark(folder, ("tf",))


TIMM_OPS = [  # (timm op name, its argument, what the Pillow backend does with it)
    ("Rotate", 20.0, "rotate"), ("ShearX", 0.2, "shear_x"), ("ShearY", -0.2, "shear_y"),
    ("TranslateXRel", 0.3, "translate_x_rel"), ("TranslateYRel", -0.3, "translate_y_rel"), ("Color", 1.6, "color"),
    ("Contrast", 0.4, "contrast"), ("Brightness", 1.5, "brightness"), ("Sharpness", 1.8, "sharpness"),
    ("Posterize", 2.0, "posterize"), ("Solarize", 128.0, "solarize"), ("SolarizeAdd", 80.0, "solarize_add"),
    ("Invert", 0.0, "invert"), ("Equalize", 0.0, "equalize"), ("AutoContrast", 0.0, "auto_contrast"),
]


@needs_dali
def test_each_randaugment_op_matches_timms_pillow_op():
    """Every op of the DALI RandAugment against timm's PIL op with the same argument, on a smooth 48 px image."""
    import io

    from PIL import ImageFilter
    from timm.data import auto_augment as aa

    from t2t.data.transforms import _posterize_allow_zero_bits

    size, fill = 48, 115
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    base = base.filter(ImageFilter.GaussianBlur(1.5))
    buf = io.BytesIO()
    base.save(buf, "PNG")
    encoded = np.frombuffer(buf.getvalue(), np.uint8)
    planner = dali_backend.SamplePlanner(size, scale=(1, 1), ratio=(1, 1), hflip=0, interpolation="bilinear",
                                         policy=dali_backend.parse_rand_policy("rand-m9-n2"), color_jitter=0)
    pipe = dali_backend.build_train_pipeline(planner, batch_size=1, num_threads=1, device_id=None, fill=fill)
    geometric = dict(resample=Image.BILINEAR, fillcolor=(fill,) * 3)
    identity = planner._layer("Identity", None)
    for name, arg, function in TIMM_OPS:
        if function == "posterize":
            expected = _posterize_allow_zero_bits(base.copy(), int(arg))
        elif name in dali_backend._GEOMETRIC:
            expected = getattr(aa, function)(base.copy(), arg, **geometric)
        elif name in ("Invert", "Equalize", "AutoContrast"):
            expected = getattr(aa, function)(base.copy())
        else:
            expected = getattr(aa, function)(base.copy(), int(arg) if name == "SolarizeAdd" else arg)
        code, param, matrix, kernel = planner._layer(name, arg)
        feeds = {"encoded": [encoded], "anchor": [np.zeros(2, np.float32)],
                 "shape": [np.array([size, size], np.float32)], "interp": [np.array(1, np.int32)],
                 "flip": [np.array(0, np.int32)], "op0": [np.array(code, np.int32)],
                 "param0": [np.array(param, np.float32)], "matrix0": [matrix], "kernel0": [kernel],
                 "op1": [np.array(identity[0], np.int32)], "param1": [np.array(0, np.float32)],
                 "matrix1": [identity[2]], "kernel1": [identity[3]]}
        for key, value in feeds.items():
            pipe.feed_input(key, value)
        ours = np.asarray(pipe.run()[0].as_array()[0], dtype=np.float64)
        expected = np.asarray(expected, dtype=np.float64)
        diff = np.abs(ours - expected).mean()
        assert diff < 1.5, (name, diff)  # uint8 levels; geometric ops differ only along the filled border
        if name != "Sharpness":  # (the op itself changes a smooth image by about 1.6 levels)
            assert np.abs(np.asarray(base, dtype=np.float64) - expected).mean() > 4, name
