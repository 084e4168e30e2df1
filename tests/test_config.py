import glob
import os

import pytest

from t2t.config import Config, ConfigError, config_from_dict, dump_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))


def test_every_recipe_is_present_and_valid():
    names = {os.path.basename(p)[:-5] for p in RECIPES}
    expected = {"t2t_vit_7", "t2t_vit_10", "t2t_vit_12", "t2t_vit_14", "t2t_vit_19", "t2t_vit_24", "t2t_vit_t_14",
                "t2t_vit_t_19", "t2t_vit_t_24", "t2t_vit_14_384", "demo"}
    assert expected <= names
    for path in RECIPES:
        load_config(path)


@pytest.mark.parametrize("name,lr,wd", [("t2t_vit_7", 1e-3, 0.03), ("t2t_vit_14", 5e-4, 0.05),
                                        ("t2t_vit_24", 5e-4, 0.065), ("t2t_vit_t_19", 5e-4, 0.065)])
def test_recipes_follow_the_paper(name, lr, wd):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.model.name == name and cfg.model.img_size == 224
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.lr_base_batch_size) == (lr, wd, 512)
    assert (cfg.train.epochs, cfg.sched.cooldown_epochs, cfg.sched.warmup_epochs) == (300, 10, 10)
    assert (cfg.sched.warmup_lr, cfg.sched.min_lr) == (1e-6, 1e-5)
    assert cfg.data.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.reprob == 0.25
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.label_smoothing) == (0.8, 1.0, 0.1)
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
