import dataclasses
import glob
import logging
import os

import pytest

from t2t import recipes
from t2t.config import RECIPE_DIR, Config, ConfigError, apply_values, config_from_dict, dump_config, load_config, \
    read_yaml
from train_helpers import ROOT

RECIPES = sorted(glob.glob(os.path.join(RECIPE_DIR, "*.yaml")))


def test_every_recipe_is_present_and_valid():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    expected = {"t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_14", "t2t_vit_19", "t2t_vit_24", "t2t_vit_t_14",
                "t2t_vit_t_19", "t2t_vit_t_24", "t2t_vit_14_384", "demo"}
    assert expected <= names
    for path in RECIPES:
        load_config(path)


@pytest.mark.parametrize("name,lr,wd", [
    ("t2t_vit_7", 1e-3, 0.03), ("t2t_vit_10", 1e-3, 0.03), ("t2t_vit_12", 1e-3, 0.03), ("t2t_vit_14", 5e-4, 0.05),
    ("t2t_vit_19", 5e-4, 0.065), ("t2t_vit_24", 5e-4, 0.065), ("t2t_vit_t_14", 5e-4, 0.05),
    ("t2t_vit_t_19", 5e-4, 0.065), ("t2t_vit_t_24", 5e-4, 0.065)])
def test_recipes_follow_the_paper(name, lr, wd):
    cfg = load_config(os.path.join(RECIPE_DIR, f"{name}.yaml"))
    assert cfg.model.name == name and cfg.model.img_size == 224
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.lr_base_batch_size) == (lr, wd, 512)
    assert (cfg.train.epochs, cfg.sched.cooldown_epochs, cfg.sched.warmup_epochs) == (300, 10, 10)
    assert (cfg.sched.warmup_lr, cfg.sched.min_lr) == (1e-6, 1e-5)
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.reprob == 0.25
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.loss.label_smoothing) == (0.8, 1.0, 0.1)
    assert cfg.ema.enabled and cfg.ema.decay == 0.99996
    assert cfg.train.seed == 42 and cfg.train.batch_size == 64 and cfg.model.drop_path_rate == 0.1


def test_overrides_take_precedence_and_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: t2t_vit_7\noptim:\n  lr: 5e-4\n")  # YAML 1.1 reads 5e-4 as a string
    cfg = load_config(str(path), ["optim.lr=0.002", "model.img_size=384", "data.scale=[0.5, 1.0]",
                                  "train.max_steps=7", "model.init_from=w.pth"])
    assert cfg.model.name == "t2t_vit_7"
    assert cfg.optim.lr == 0.002 and isinstance(cfg.optim.lr, float)
    assert cfg.model.img_size == 384 and cfg.data.scale == (0.5, 1.0) and cfg.train.max_steps == 7
    assert load_config(str(path)).optim.lr == 5e-4


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=0.1", "did you mean 'optim.lr'"),
    ("trian.epochs=3", "did you mean 'train'"),
    ("model.img_size=100", "model.img_size=100: expected a positive multiple of 16"),
    ("train.batch_size=0", "train.batch_size=0: expected >= 1"),
    ("optim.lr=-1", "optim.lr=-1.0: expected > 0"),
    ("train.amp=fp8", "train.amp='fp8'"),
    ("train.batch_size=abc", "train.batch_size='abc' (from command line"),
    ("ema.enabled=maybe", "expected true or false"),
    ("model.img_size", "expected section.key=value"),
])
def test_bad_values_name_the_key_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_misspelt_yaml_key_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"'train.epocs' \(from .*bad.yaml\); did you mean 'train.epochs'"):
        load_config(str(path))


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(None, ["model.name=t2t_vit_t_14", "optim.betas=[0.8, 0.9]"])
    assert config_from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(str(path)) == cfg
    assert Config() == load_config(None)


def _float_keys():
    """Every config key holding a float or a tuple of floats."""
    cfg = Config()
    for section in cfg.to_dict():
        for key, value in getattr(cfg, section).__dict__.items():
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) for v in values):
                yield f"{section}.{key}", isinstance(value, tuple), len(values)


@pytest.mark.parametrize("bad", [".inf", "-.inf", ".nan"])
def test_no_float_key_accepts_inf_or_nan(bad):
    keys = list(_float_keys())
    assert len(keys) > 20  # lr, weight_decay, betas, the mixup and data probabilities, ...
    for dotted, is_tuple, n in keys:
        value = f"[{', '.join([bad] * n)}]" if is_tuple else bad
        with pytest.raises(ConfigError, match=f"{dotted}=.*: expected a finite number"):
            load_config(None, [f"{dotted}={value}"])


def test_optional_floats_and_the_timm_escape_hatch():
    assert load_config(None, ["optim.clip_grad=null"]).optim.clip_grad is None
    assert load_config(None, ["model.name=t2t_vit_14.in1k_384"]).model.name == "t2t_vit_14.in1k_384"
    cfg = load_config(None, ["model.name=resnet18", "model.allow_any_timm_model=true"])
    assert cfg.model.name == "resnet18"


def test_every_config_file_loads_without_old_key_names(caplog):
    assert len(RECIPES) >= 18
    with caplog.at_level(logging.WARNING, logger="t2t.config"):
        for path in RECIPES:
            load_config(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_committed_recipes_are_their_generated_form():
    generated = recipes.generated_files()
    assert len(generated) >= 14  # 9 from scratch, t2t_vit_14 at 384, 4 CIFAR transfers
    for path, text in generated.items():
        assert os.path.isfile(path), f"{path} is missing: run python -m t2t.recipes --write"
        with open(path, encoding="utf-8") as f:
            assert f.read() == text, f"{path} differs from the table in t2t/recipes.py: edit the table, then " \
                                     "run python -m t2t.recipes --write"


def test_generated_recipes_state_only_what_differs_from_the_defaults():
    for name in recipes.RECIPES:
        path = os.path.join(RECIPE_DIR, f"{name}.yaml")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert f"t2t-train -c {name} --print-config" in text and "takes its default" in text
        for section, entries in read_yaml(path).items():
            for key, value in entries.items():
                cfg = Config()
                apply_values(cfg, {section: {key: value}}, path)
                assert cfg != Config(), f"{name}: {section}.{key}={value!r} is the default"


def test_every_range_check_sits_on_its_field():
    """The range checks are field metadata (59, as many as the table they replace); every default passes its own."""
    cfg = Config()
    checked = [(section, f) for section in cfg.to_dict() for f in dataclasses.fields(getattr(cfg, section))
               if "check" in f.metadata]
    assert len(checked) >= 59
    for section, f in checked:
        assert f.metadata["check"].ok(getattr(getattr(cfg, section), f.name)), f"{section}.{f.name}"


def test_label_smoothing_is_a_loss_setting_and_the_old_name_still_works(tmp_path, caplog):
    assert Config().loss.label_smoothing == 0.1 and not hasattr(Config().mixup, "label_smoothing")
    path = tmp_path / "old.yaml"
    path.write_text("mixup:\n  mixup_alpha: 0.5\n  label_smoothing: 0.2\n")
    with caplog.at_level(logging.WARNING, logger="t2t.config"):
        cfg = load_config(str(path))
    assert cfg.loss.label_smoothing == 0.2 and cfg.mixup.mixup_alpha == 0.5
    (record,) = caplog.records
    assert record.getMessage() == f"mixup.label_smoothing (from {path}) is read as loss.label_smoothing, its new name"
    assert load_config(None, ["mixup.label_smoothing=0.3"]).loss.label_smoothing == 0.3
    with pytest.raises(ConfigError, match=r"loss.label_smoothing=1.0: expected in \[0, 1\)"):
        load_config(None, ["mixup.label_smoothing=1.0"])
    stored = Config().to_dict()  # a config as older checkpoints stored it
    del stored["loss"]
    stored["mixup"]["label_smoothing"] = 0.05
    assert config_from_dict(stored).loss.label_smoothing == 0.05


def test_old_and_new_name_together_must_agree(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("mixup:\n  label_smoothing: 0.2\nloss:\n  label_smoothing: 0.1\n")
    with pytest.raises(ConfigError, match=r"mixup.label_smoothing=0.2 and loss.label_smoothing=0.1 \(from .*both.yaml\)"
                                          r": mixup.label_smoothing is the old name of loss.label_smoothing"):
        load_config(str(path))
    path.write_text("mixup:\n  label_smoothing: 0.1\nloss:\n  label_smoothing: 0.1\n")
    assert load_config(str(path)).loss.label_smoothing == 0.1


def test_resume_does_not_report_a_renamed_key_as_a_change(caplog):
    from t2t.engine.run import _warn_config_changes

    cfg = load_config(None, ["loss.label_smoothing=0.2"])
    stored = cfg.to_dict()
    stored["mixup"]["label_smoothing"] = stored.pop("loss")["label_smoothing"]
    with caplog.at_level(logging.WARNING):
        _warn_config_changes(cfg, stored)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    stored["mixup"]["label_smoothing"] = 0.1
    with caplog.at_level(logging.WARNING):
        _warn_config_changes(cfg, stored)
    assert "loss.label_smoothing: 0.1 -> 0.2" in caplog.text
