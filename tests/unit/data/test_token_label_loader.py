"""Token labels inside the training data path: maps follow each image's crop, flip and RandAugment geometry;
MixToken on whole patches; label folders that do not fit are one-line errors naming the image."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp
from torchvision.transforms import Compose

from t2t import rng
from t2t.config import RECIPE_DIR, ConfigError, load_config
from t2t.data import setup as data_setup
from t2t.data.token_label import (
    LabelMapError,
    TokenLabelDataset,
    TokenLabelTransform,
    crop_label_map,
    dense_scores,
    label_path,
    label_targets,
    mix_token,
    save_label_map,
)
from t2t.data.transforms import FastTrainTransform
from train_helpers import ROOT

# Quadrant colours: class q is the colour of quadrant q (top-left, top-right, bottom-left, bottom-right).
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)], dtype=np.int64)
FILL = (128, 128, 128)
W, H = 48, 40  # not square: the fractions of width and height must not be mixed up


def quadrant_image() -> Image.Image:
    a = np.zeros((H, W, 3), dtype=np.uint8)
    a[:H // 2, :W // 2], a[:H // 2, W // 2:] = COLOURS[0], COLOURS[1]
    a[H // 2:, :W // 2], a[H // 2:, W // 2:] = COLOURS[2], COLOURS[3]
    return Image.fromarray(a)


def quadrant_scores(h: int, w: int, score: float = 20.0) -> torch.Tensor:
    """(4, h, w): `score` for the quadrant's class at each location of an h x w grid over the image."""
    ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
    q = (ys[:, None] >= 0.5).long() * 2 + (xs[None, :] >= 0.5).long()
    return torch.nn.functional.one_hot(q, 4).permute(2, 0, 1).float() * score


def pixel_classes(rgb: np.ndarray) -> np.ndarray:
    """Class of each pixel of an (h, w, 3) image by its nearest quadrant colour; -1 for the fill, -2 for mixtures."""
    palette = np.concatenate([COLOURS, np.array([FILL])])
    dist = np.abs(rgb[:, :, None, :].astype(np.int64) - palette[None, None]).max(-1)  # (h, w, 5)
    cls = dist.argmin(-1)
    cls = np.where(cls == 4, -1, cls)
    return np.where(dist.min(-1) <= 40, cls, -2)


def interior(classes: np.ndarray) -> np.ndarray:
    """Pixel classes, with -2 where a pixel touches another class (the resize blurs a boundary by a pixel)."""
    padded = np.pad(classes, 1, mode="edge")
    h, w = classes.shape
    same = np.ones_like(classes, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy:dy + h, dx:dx + w] == classes
    return np.where(same, classes, -2)


@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_randaugment_geometric_ops_move_the_map_with_the_image(op):
    hparams = dict(img_mean=FILL, translate_pct=0.45, interpolation=Image.NEAREST)
    base = FastTrainTransform(32, scale=(0.5, 1.0), hflip=0.5, interpolation="nearest",
                              color_transform=Compose([AugmentOp(op, prob=1.0, magnitude=9, hparams=hparams)]))
    transform = TokenLabelTransform(base)
    scores = quadrant_scores(H, W)[None]
    img = quadrant_image()
    moved_any = False
    for seed in range(6):
        import random
        random.seed(seed)
        torch.manual_seed(seed)
        out, geometry = transform(img)
        moved_any |= not torch.allclose(geometry[5:], torch.tensor([1.0, 0, 0, 0, 1, 0]))
        want = interior(pixel_classes(out.permute(1, 2, 0).numpy())).reshape(-1)  # one token per pixel: grid 32
        _, dense = label_targets(scores, geometry[None], 32)
        _, unmoved = label_targets(scores, torch.cat([geometry[:5], torch.tensor([1.0, 0, 0, 0, 1, 0])])[None], 32)
        got, got_unmoved = dense[0].argmax(-1).numpy(), unmoved[0].argmax(-1).numpy()
        classed, fill = want >= 0, want == -1
        agree = (got[classed] == want[classed]).mean()
        assert agree > 0.99, (op, seed, agree)
        if fill.any():  # where the image shows the fill colour, the map has no information: uniform rows
            assert (dense[0][torch.from_numpy(fill)].max(-1).values < 0.3).float().mean() > 0.9
        if (got_unmoved[classed] != want[classed]).mean() > 0.1:  # the op moved things: ignoring it would be wrong
            assert agree > (got_unmoved[classed] == want[classed]).mean() + 0.05
    assert moved_any


def make_quadrant_folder(root, label_dir, *, classes=4, per_class=2, topk=2, teacher="abc123",
                         label_size=(6, 8)) -> str:
    """ImageFolder of quadrant images (PNG) in `classes` folders, each with its quadrant label map."""
    names = [f"c{i}" for i in range(classes)]
    for split in ("train", "val"):
        for name in names:
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for k in range(per_class):
                quadrant_image().save(os.path.join(root, split, name, f"img{k}.png"))
                if split == "train":
                    scores = quadrant_scores(*label_size)
                    values, indices = scores.topk(topk, dim=0)
                    save_label_map(label_path(label_dir, f"{name}/img{k}.png"), values, indices, teacher=teacher)
    with open(os.path.join(label_dir, "labels.json"), "w") as f:
        json.dump({"path": "teacher.pth", "sha256": teacher, "topk": topk, "img_size": 32, "classes": names}, f)
    return root


@pytest.fixture
def quadrants(tmp_path):
    label_dir = str(tmp_path / "labels")
    return make_quadrant_folder(str(tmp_path / "data"), label_dir), label_dir


def build_data(data_dir, label_dir, *overrides, batch_size=8):
    cfg = load_config(overrides=["model.img_size=64", "data.workers=0", "data.auto_augment=null", "data.reprob=0",
                                 "data.interpolation=bilinear", "data.scale=[0.2,1.0]", *overrides])
    cfg.token_label.dir = label_dir
    cfg.train.seed, cfg.eval.batch_size, cfg.loss.label_smoothing = 3, 8, 0.0
    spec = data_setup.DataSpec.from_config(cfg, batch_size=batch_size, global_batch_size=batch_size,
                                           eval_crop_pct=0.9, eval_interpolation="bilinear")
    data = data_setup.build_train_and_val(spec, data_dir)
    return cfg, data


def images_as_rgb(images: torch.Tensor) -> np.ndarray:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (images * std + mean).mul(255).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()


def test_map_in_a_training_batch_is_the_map_of_the_crop_and_flip_the_image_got(quadrants):
    data_dir, label_dir = quadrants
    _, data = build_data(data_dir, label_dir)
    to_device = data.feed.train
    checked = 0
    for epoch in range(3):
        images, targets = next(iter(data.train_batches(epoch)))
        assert set(targets) == {"label", "values", "indices", "geometry"} and targets["values"].dtype == torch.float16
        _, (cls, dense) = to_device(images, targets)
        assert cls.shape == (8, 4) and dense.shape == (8, 16, 4)
        rgb = images_as_rgb(images)
        for b in range(8):
            # The batch's rows are this sample's map, cut at its recorded crop and flip.
            box, flip = targets["geometry"][b, :4].tolist(), bool(targets["geometry"][b, 4])
            scores = dense_scores(targets["values"][b].float(), targets["indices"][b].long(), 4)
            ref_cls, ref_dense = crop_label_map(scores, box, 4, flip=flip)
            torch.testing.assert_close(dense[b], ref_dense)
            torch.testing.assert_close(cls[b], ref_cls)
            # And that crop and flip are the image's: a token wholly of one quadrant colour carries that class.
            token_px = pixel_classes(rgb[b]).reshape(4, 16, 4, 16).transpose(0, 2, 1, 3).reshape(16, -1)
            for t in range(16):
                if (token_px[t] == token_px[t][0]).all() and token_px[t][0] >= 0:
                    assert int(dense[b, t].argmax()) == token_px[t][0], (epoch, b, t)
                    checked += 1
    assert checked > 50


def test_same_sample_same_map_whatever_the_worker(quadrants):
    """Per-sample reseeding covers the geometry: a sample's targets do not depend on the loader workers."""
    data_dir, label_dir = quadrants
    _, data = build_data(data_dir, label_dir)
    ds = data.train_loader.dataset
    ds.set_epoch(1)
    a, b = ds[5], ds[5]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["geometry"], b[1]["geometry"])
    ds.set_epoch(2)
    assert not torch.equal(ds[5][1]["geometry"], a[1]["geometry"])


def test_mix_token_in_the_loader_path(quadrants):
    data_dir, label_dir = quadrants
    cfg, data = build_data(data_dir, label_dir, "mixup.mixup_alpha=0", "mixup.cutmix_alpha=0")
    mix = data_setup.build_mix_token_fn(cfg.token_label, cfg.mixup)
    to_device = data.feed.train
    images, (cls, dense) = to_device(*next(iter(data.train_batches(0))))
    boxes = set()
    for step in range(10):
        rng.reseed_step(0, step, 0)  # what the Trainer does before each micro-step
        out, (m_cls, m_dense) = mix(images, (cls, dense))
        rng.reseed_step(0, step, 0)
        *_, (top, left, bottom, right) = mix_token(images, cls, dense, alpha=1.0, patch=16)  # the box it drew
        boxes.add((top, left, bottom, right))
        torch.testing.assert_close(m_cls.sum(-1), torch.ones(8))
        torch.testing.assert_close(m_dense.sum(-1), torch.ones(8, 16))
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[top * 16:bottom * 16, left * 16:right * 16] = True  # whole 16-px patches of the 4 x 4 grid
        assert torch.equal(out, torch.where(inside, images.flip(0), images))
        tokens = inside.view(4, 16, 4, 16)[:, 0, :, 0].flatten()
        assert torch.equal(m_dense, torch.where(tokens[None, :, None], dense.flip(0), dense))
        lam = 1 - float(tokens.float().mean())
        torch.testing.assert_close(m_cls, lam * cls + (1 - lam) * cls.flip(0))
    assert len(boxes) > 3 and any(b[2] > b[0] and b[3] > b[1] for b in boxes)
    assert data_setup.build_mix_token_fn(cfg.token_label.__class__(mix_token_alpha=0), cfg.mixup) is None
    with pytest.raises(ConfigError, match="MixToken replaces"):
        data_setup.build_mix_token_fn(cfg.token_label, load_config().mixup)


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_map_is_one_line_naming_the_image(quadrants):
    data_dir, label_dir = quadrants
    os.remove(label_path(label_dir, "c2/img1.png"))
    with pytest.raises(LabelMapError) as err:
        build_data(data_dir, label_dir)
    msg = _one_line(err)
    assert os.path.join(data_dir, "train", "c2", "img1.png") in msg and "1 of 8" in msg


def test_a_map_that_does_not_match_labels_json_names_the_image(quadrants, tmp_path):
    data_dir, label_dir = quadrants
    _, data = build_data(data_dir, label_dir)
    ds: TokenLabelDataset = data.train_loader.dataset
    image = os.path.join(data_dir, "train", "c1", "img0.png")
    values, indices = quadrant_scores(6, 8).topk(2, dim=0)
    for kwargs, words in ((dict(teacher="other"), "teacher"), (dict(), None)):
        save_label_map(label_path(label_dir, "c1/img0.png"), values, indices, **kwargs)
        if words:
            with pytest.raises(LabelMapError, match=words) as err:
                ds.label_map(image)
            assert image in _one_line(err)
    save_label_map(label_path(label_dir, "c1/img0.png"), values[:1], indices[:1], teacher="abc123")
    with pytest.raises(LabelMapError, match="top-1") as err:
        ds.label_map(image)
    assert image in _one_line(err)
    os.remove(label_path(label_dir, "c1/img0.png"))  # gone after the start: the worker's error names the image
    with pytest.raises(LabelMapError) as err:
        ds[[p for p, _ in ds.samples].index(image)]
    assert image in _one_line(err)


def test_label_folder_of_other_classes_or_without_labels_json(quadrants, tmp_path):
    data_dir, label_dir = quadrants
    with open(os.path.join(label_dir, "labels.json")) as f:
        record = json.load(f)
    record["classes"] = ["c0", "c1", "c2", "zebra"]
    with open(os.path.join(label_dir, "labels.json"), "w") as f:
        json.dump(record, f)
    with pytest.raises(LabelMapError, match="another data set") as err:
        build_data(data_dir, label_dir)
    _one_line(err)
    with pytest.raises(LabelMapError, match="labels.json") as err:
        build_data(data_dir, str(tmp_path / "data"))  # a folder without labels.json
    _one_line(err)


def test_cifar_transform_is_refused_in_one_line(quadrants):
    data_dir, label_dir = quadrants
    for override, words in (("data.train_transform=cifar", "data.train_transform=imagenet"),):
        with pytest.raises(ConfigError, match=words) as err:
            build_data(data_dir, label_dir, override)
        _one_line(err)


def test_token_label_dir_needs_the_aux_head():
    with pytest.raises(ConfigError, match="model.token_label=true") as err:
        load_config(overrides=["token_label.dir=/labels", "model.img_size=64"])
    _one_line(err)


@pytest.mark.parametrize("name", ["t2t_vit_24_token_label.yaml", "demo_token_label.yaml"])
def test_token_label_recipes_load(name):
    root = ROOT
    cfg = load_config(os.path.join(RECIPE_DIR, name))
    assert cfg.model.token_label and cfg.token_label.dir
    assert cfg.mixup.mixup_alpha == 0 and cfg.mixup.cutmix_alpha == 0


def test_token_labels_on_shards_are_the_folders(quadrants, tmp_path):
    """Shards made from the folder find each image's map by its path in the folder: the same batches."""
    from t2t.data.shards import make_shards

    data_dir, label_dir = quadrants
    shards = str(tmp_path / "shards")
    make_shards(data_dir, shards, shard_size=3)
    _, from_folder = build_data(data_dir, label_dir)
    _, from_shards = build_data(shards, label_dir, "data.format=shards")
    for epoch in range(2):
        (a, ta), (b, tb) = next(iter(from_folder.train_batches(epoch))), next(iter(from_shards.train_batches(epoch)))
        assert torch.equal(a, b) and ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_batch_buffers_hand_over_the_same_token_label_batches(quadrants):
    """data.batch_buffers: the workers write the images and label maps into shared buffers, same values."""
    from t2t.data.batch_buffers import BufferedLoader
    data_dir, label_dir = quadrants
    _, buffered = build_data(data_dir, label_dir, "data.workers=2", "data.batch_buffers=true", batch_size=2)
    _, usual = build_data(data_dir, label_dir, "data.workers=2", "data.batch_buffers=false", batch_size=2)
    assert isinstance(buffered.train_loader, BufferedLoader)
    assert not isinstance(usual.train_loader, BufferedLoader)
    for epoch in range(2):
        count = 0
        for (images, targets), (ref_images, ref_targets) in zip(buffered.train_batches(epoch),
                                                                usual.train_batches(epoch)):
            count += 1
            assert torch.equal(images, ref_images) and targets.keys() == ref_targets.keys()
            for key in targets:
                assert targets[key].dtype == ref_targets[key].dtype and torch.equal(targets[key], ref_targets[key])
        assert count == len(usual.train_loader) > 1
    assert buffered.train_loader.fallbacks == 0  # every batch, label maps included, came through a buffer
