"""Config sections distill and token_label: defaults, range checks, one-line errors."""
import pytest

from t2t.config import RECIPE_DIR, ConfigError, load_config
from train_helpers import ROOT


def test_defaults_are_plain_training():
    cfg = load_config()
    assert cfg.distill.type == "none" and cfg.distill.teacher is None
    assert (cfg.distill.alpha, cfg.distill.tau) == (0.5, 1.0)  # DeiT's defaults
    assert (cfg.token_label.cls_weight, cfg.token_label.dense_weight) == (1.0, 1.0)  # TokenLabeling's
    assert cfg.model.token_label is False


@pytest.mark.parametrize("overrides, match", [
    (["distill.alpha=1.5"], "distill.alpha=1.5"),
    (["distill.alpha=-0.1"], "distill.alpha=-0.1"),
    (["distill.tau=0"], "distill.tau=0.0"),
    (["distill.type=soft"], "needs distill.teacher"),
    (["distill.type=medium"], "distill.type='medium'"),
    (["distill.teacher_img_size=0"], "distill.teacher_img_size=0"),
    (["token_label.dense_weight=-1"], "token_label.dense_weight=-1.0"),
    (["token_label.cls_weight=0", "token_label.dense_weight=0"], "both 0"),
    (["model.token_label=true", "model.name=t2t_vit_7_distilled"], "plain T2T-ViT"),
    (["distill.techer=x"], "did you mean 'distill.teacher'"),
])
def test_bad_values_name_key_and_value(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(overrides=overrides)
    assert "\n" not in str(info.value)


def test_distilled_names_are_t2t_models():
    cfg = load_config(overrides=["model.name=t2t_vit_14_distilled", "distill.type=hard", "distill.teacher=t.pth"])
    assert cfg.model.name == "t2t_vit_14_distilled"


@pytest.mark.parametrize("name", ["t2t_vit_24_token_label.yaml", "demo_distill.yaml"])
def test_recipes_load(name):
    import os
    root = ROOT
    overrides = ["distill.teacher=t.pth"] if name.startswith("demo_distill") else []
    load_config(os.path.join(RECIPE_DIR, name), overrides)
