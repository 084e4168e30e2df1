"""Progressive resolution (train.img_sizes): config checks, the size of each epoch, the per-size data and tables."""
import math

import pytest
import torch
from PIL import Image

import t2t
from t2t.config import TOKEN_STRIDE, ConfigError, load_config
from t2t.data.loader import set_loader_epoch, build_train_loader
from t2t.data.dataset import ImageFolderDataset
from t2t.data.progressive import ResolutionSchedule, SizeScheduledTransform
from t2t.data.sampler import TrainSampler
from t2t.data.setup import build_train_tf
from t2t.models import T2TModule
from t2t.models.factory import create_model, named_model_config
from t2t.models.positions import PositionTables
from train_helpers import make_data


def _cfg(*overrides):
    return load_config("demo", ["data.workers=0", *overrides])


def test_equal_phases_and_given_starts():
    cfg = _cfg("train.epochs=12", "train.img_sizes=[32,48,64]")
    schedule = ResolutionSchedule.from_config(cfg.train)
    assert schedule.starts == (0, 4, 8)
    assert [schedule.size_at(e) for e in range(12)] == [32] * 4 + [48] * 4 + [64] * 4
    cfg = _cfg("train.epochs=10", "train.img_sizes=[48,64]", "train.img_size_epochs=[0,7]")
    schedule = ResolutionSchedule.from_config(cfg.train)
    assert [schedule.size_at(e) for e in range(10)] == [48] * 7 + [64] * 3
    assert ResolutionSchedule.from_config(_cfg().train) is None
    # Uneven: 10 epochs in 3 phases start at 0, 3, 6.
    assert ResolutionSchedule.from_config(_cfg("train.epochs=10", "train.img_sizes=[32,48,64]").train).starts == (0, 3, 6)


@pytest.mark.parametrize("overrides, message", [
    (["train.img_sizes=[40,64]"], "40 is not a positive multiple of 16"),
    (["train.img_sizes=[64,48]"], "expected strictly ascending sizes"),
    (["train.img_sizes=[32,48]"], "the last size must be model.img_size=64"),
    (["train.img_sizes=[48,64]", "train.img_size_epochs=[0]"], "one start epoch per size"),
    (["train.img_sizes=[48,64]", "train.img_size_epochs=[1,5]"], "strictly ascending epochs starting at 0"),
    (["train.img_sizes=[48,64]", "train.img_size_epochs=[0,12]"], "at least one of the train.epochs=12"),
    (["train.img_sizes=[16,32,48,64]", "train.epochs=3"], "at least one of the train.epochs=3"),
    (["train.img_size_epochs=[0,5]"], "without train.img_sizes"),
    (["train.img_sizes=[48,64]", "data.backend=dali"], "data.backend=dali"),
    (["train.img_sizes=[48,64]", "token_label.dir=/x", "model.token_label=true"], "token_label.dir"),
    (["train.img_sizes=[48,64]", "model.name=resnet18", "model.allow_any_timm_model=true"], "expected a T2T-ViT"),
])
def test_bad_schedules_fail_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        _cfg("train.epochs=12", *overrides)
    assert "\n" not in str(info.value)


def test_token_stride_is_the_soft_splits_stride():
    t2t_module = T2TModule(img_size=64, embed_dim=32, token_dim=8)
    strides = [getattr(t2t_module, f"soft_split{i}").stride for i in range(3)]
    assert math.prod(strides) == TOKEN_STRIDE
    for size in (32, 48, 64):  # a size the check lets through gives (size / 16)^2 tokens
        assert t2t_module(torch.zeros(1, 3, size, size)).shape[1] == (size // TOKEN_STRIDE) ** 2


def test_position_table_is_validates_resampling(tmp_path):
    """The table lent at 48 px is the one validate.py's model at 48 px loads; the forwards agree."""
    torch.manual_seed(0)
    model = create_model(named_model_config("t2t_vit_7", img_size=64), 5).eval()
    path = tmp_path / "weights.pth"
    torch.save({"model": model.state_dict()}, path)
    small = create_model(named_model_config("t2t_vit_7", img_size=48), 5).eval()
    t2t.load_pretrained_weights(small, str(path))
    tables = PositionTables(model)
    assert torch.equal(tables.table(48), small.pos_embed)
    assert tables.table(64) is model.pos_embed
    stored = model.pos_embed
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad(), tables.at(48):
        out = model(images)
    assert model.pos_embed is stored and tuple(model.state_dict()["pos_embed"].shape) == (1, 17, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(out, small(images), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of 16"):
        tables.table(40)


def test_position_table_is_restored_after_an_error():
    model = create_model(named_model_config("t2t_vit_7", img_size=64), 5)
    tables = PositionTables(model)
    stored = model.pos_embed
    with pytest.raises(RuntimeError):
        with tables.at(48):
            model(torch.zeros(1, 3, 64, 64))  # 16 tokens against a table of 9: the add fails
    assert model.pos_embed is stored


def test_transform_follows_the_epoch_in_workers(tmp_path):
    """Persistent workers give each epoch's size; a sample's draws are those of the plain transform at that size."""
    cfg = _cfg("train.epochs=4", "train.img_sizes=[32,48,64]", "train.img_size_epochs=[0,1,3]")
    data = make_data(str(tmp_path), classes=2, train=4, val=1, size=40)
    schedule = ResolutionSchedule.from_config(cfg.train)
    scheduled = SizeScheduledTransform({s: build_train_tf(cfg.data, s) for s in schedule.sizes}, schedule)
    dataset = ImageFolderDataset(f"{data}/train", scheduled, seed=7)
    loader = build_train_loader(dataset, batch_size=4, sampler=TrainSampler(len(dataset), seed=7), workers=2)
    for epoch, size in enumerate([32, 48, 48, 64]):
        set_loader_epoch(loader, epoch)
        images = torch.cat([images for images, _ in loader])
        assert images.shape[-2:] == (size, size)
        plain = ImageFolderDataset(f"{data}/train", build_train_tf(cfg.data, size), seed=7)
        plain.set_epoch(epoch)
        sampler = TrainSampler(len(dataset), seed=7)
        sampler.set_epoch(epoch)
        expected = torch.stack([plain[i][0] for i in sampler])
        assert torch.equal(images, expected), f"epoch {epoch}"
