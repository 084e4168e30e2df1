"""One model factory, one eval preprocessing resolver, one exit-status table (t2t/models/factory.py, t2t/cli.py)."""
import os
import sys

import pytest
import timm
import torch

from t2t.cli import EXIT_INTERRUPTED, EXIT_IO, EXIT_USAGE, UsageError, exit_status, run_main
from t2t.config import Config, ConfigError, ModelConfig, config_from_dict, load_config
from t2t.inference import CheckpointInfo, load_model
from t2t.models import T2TViT, T2TViTDistilled, T2TViTTokenLabel, create_token_label_model
from t2t.models.factory import create_model, named_model_config, resolve_eval_preprocessing
from train_helpers import ROOT, token_label_checkpoint

from t2t import validate

FORMAT1 = os.path.join(ROOT, "tests", "fixtures", "format1_step5.pth")


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert type(a) is type(b)
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape and torch.equal(sa[key], sb[key]), key


# The factory builds what each entry point built before it (same class, keys, shapes and, from the same seed,
# the same initial values): training's _build_model, the token-label path, the tools' name-only builds.
@pytest.mark.parametrize("name,token_label", [("t2t_vit_7", False), ("t2t_vit_7", True),
                                              ("t2t_vit_t_14_distilled", False)])
def test_factory_builds_the_model_training_built(name, token_label):
    cfg = ModelConfig(name=name, img_size=32, drop_rate=0.1, drop_path_rate=0.2, token_label=token_label)
    torch.manual_seed(3)
    ours = create_model(cfg, 5)
    torch.manual_seed(3)
    kwargs = dict(num_classes=5, img_size=32, drop_rate=0.1, drop_path_rate=0.2)
    before = create_token_label_model(name, **kwargs) if token_label else timm.create_model(name, **kwargs)
    assert_same_model(ours, before)
    assert isinstance(ours, T2TViTTokenLabel if token_label else (T2TViTDistilled if "distilled" in name else
                                                                   T2TViT))


def test_tools_build_from_a_name_as_timm_did():
    torch.manual_seed(0)
    ours = create_model(named_model_config("t2t_vit_7", 64))
    torch.manual_seed(0)
    assert_same_model(ours, timm.create_model("t2t_vit_7", img_size=64))
    assert type(ours.blocks[-1].drop_path2).__name__ == "Identity"  # no drop-path, as timm's defaults
    # img_size=None leaves the size to the pretrained cfg (the 384 release), as timm.create_model(name) did
    assert create_model(named_model_config("t2t_vit_7"), img_size=None).img_size == 224


def test_grad_checkpointing_is_the_configs_unless_turned_off():
    cfg = ModelConfig(name="t2t_vit_7", img_size=32, grad_checkpointing=True)
    assert create_model(cfg, 3).grad_checkpointing is True
    assert create_model(cfg, 3, grad_checkpointing=False).grad_checkpointing is False


def test_stored_config_rebuilds_the_exact_model():
    cfg = Config()
    cfg.model = ModelConfig(name="t2t_vit_7", img_size=32, token_label=True)
    torch.manual_seed(1)
    trained = create_model(cfg.model, 4)
    rebuilt = create_model(config_from_dict(cfg.to_dict()).model, 4)
    assert type(rebuilt) is T2TViTTokenLabel
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == \
        [(k, v.shape) for k, v in trained.state_dict().items()]


# Eval preprocessing: the model's pretrained cfg gives the defaults, explicit settings win.
def test_eval_preprocessing_from_the_pretrained_cfg():
    at_384 = resolve_eval_preprocessing("t2t_vit_14.in1k_384")
    assert (at_384.img_size, at_384.crop_pct, at_384.interpolation) == (384, 0.9, "bicubic")
    assert at_384.mean == pytest.approx((0.485, 0.456, 0.406)) and at_384.std == pytest.approx((0.229, 0.224, 0.225))
    resize = at_384.transform().transforms[0]
    assert resize.size == 426  # floor(384 / 0.9), the paper's 384 eval
    default = resolve_eval_preprocessing("t2t_vit_7")
    assert (default.img_size, default.crop_pct, default.interpolation) == (224, 0.9, "bicubic")
    assert default.transform().transforms[0].size == 248


def test_explicit_settings_override_the_pretrained_cfg():
    pre = resolve_eval_preprocessing("t2t_vit_14.in1k_384", img_size=288, crop_pct=1.0, interpolation="bilinear",
                                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert pre == type(pre)(288, 1.0, "bilinear", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model = create_model(named_model_config("t2t_vit_7", 64))
    assert resolve_eval_preprocessing(model).img_size == 64  # the module's own size before the cfg's 224


def test_unset_eval_config_evaluates_as_the_paper_and_old_configs_still_load():
    cfg = Config()
    assert cfg.eval.crop_pct is None and cfg.eval.interpolation is None  # from the model
    pre = resolve_eval_preprocessing(cfg.model.name, img_size=cfg.model.img_size, crop_pct=cfg.eval.crop_pct,
                                     interpolation=cfg.eval.interpolation)
    assert (pre.crop_pct, pre.interpolation) == (0.9, "bicubic")  # what the old defaults said
    old = config_from_dict(torch.load(FORMAT1, weights_only=True)["config"])
    assert (old.eval.crop_pct, old.eval.interpolation) == (0.9, "bicubic")
    with pytest.raises(ConfigError, match="eval.crop_pct"):
        load_config(None, ["eval.crop_pct=1.5"])


# validate.py: checkpoint's stored config < -c file < section.key=value overrides < flags (aliases).
def test_validate_settings_precedence(tmp_path):
    stored = Config()
    stored.model.name, stored.model.img_size = "t2t_vit_7", 32
    stored.eval.crop_pct, stored.eval.interpolation = 0.95, "bicubic"
    info = CheckpointInfo(num_classes=3, img_size=32, arch="t2t_vit_7", config=stored.to_dict())
    ckpt = str(tmp_path / "m.pth")

    def resolve(*argv):
        args = validate.parse_args(["--data-dir", str(tmp_path), "--checkpoint", ckpt, *argv])
        return validate.resolve_config(args, info, ckpt), args

    cfg, _ = resolve()
    assert (cfg.model.name, cfg.model.img_size, cfg.eval.crop_pct, cfg.eval.batch_size, cfg.train.amp) == \
        ("t2t_vit_7", 32, 0.95, 100, "none")  # stored model and eval settings, validate's run-time defaults
    config = tmp_path / "eval.yaml"
    config.write_text("model:\n  img_size: 64\neval:\n  crop_pct: 0.8\n  interpolation: bilinear\n  batch_size: 7\n")
    cfg, _ = resolve("-c", str(config))
    assert (cfg.model.img_size, cfg.eval.crop_pct, cfg.eval.interpolation, cfg.eval.batch_size) == \
        (64, 0.8, "bilinear", 7)
    cfg, _ = resolve("-c", str(config), "eval.crop_pct=0.7", "eval.batch_size=5")
    assert (cfg.eval.crop_pct, cfg.eval.batch_size, cfg.eval.interpolation) == (0.7, 5, "bilinear")
    cfg, args = resolve("-c", str(config), "eval.batch_size=5", "--batch-size", "3", "--interpolation", "nearest",
                        "--crop-pct", "1.0", "--amp", "bf16")
    assert (cfg.eval.batch_size, cfg.eval.interpolation, cfg.train.amp) == (3, "nearest", "bf16")
    assert [(r.img_size, r.crop_pct) for r in validate.resolve_resolutions(args, cfg)] == [(64, 1.0)]
    cfg, args = resolve("--checkpoint", "eval.crop_pct=0.75")  # an override written after --checkpoint
    assert cfg.eval.crop_pct == 0.75 and args.checkpoint == [ckpt]
    with pytest.raises(ConfigError, match="--batch-size"):
        resolve("--batch-size", "0")


def test_validate_without_a_stored_config_takes_the_model_and_size_the_file_records(tmp_path):
    info = CheckpointInfo(num_classes=1000, img_size=384, arch="T2t_vit_14", config=None)
    args = validate.parse_args(["--data-dir", str(tmp_path), "--checkpoint", "x.pth"])
    cfg = validate.resolve_config(args, info, "x.pth")
    assert (cfg.model.name, cfg.model.img_size, cfg.eval.crop_pct) == ("t2t_vit_14", 384, None)
    assert [(r.img_size, r.crop_pct) for r in validate.resolve_resolutions(args, cfg)] == [(384, 0.9)]
    with pytest.raises(ConfigError, match="records no model name"):
        validate.resolve_config(args, CheckpointInfo(num_classes=10, img_size=224, arch=None), "x.pth")


# A token-labeling checkpoint is evaluated with its aux head (TokenLabeling's rule), as the run built it.


def test_predict_loads_a_token_label_checkpoint_as_its_model(tmp_path):
    model, path = token_label_checkpoint(tmp_path)
    loaded = load_model(path)
    assert type(loaded.model) is T2TViTTokenLabel and loaded.classes == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded.model(x), model(x))


# One table from error type to exit status, applied by run_main for every tool.
def test_exit_status_table():
    from t2t.data.dataset import DatasetError
    from t2t.engine.checkpoint import CheckpointSaveError
    from t2t.engine.distributed import DistributedSetupError
    from t2t.engine.trainer import NonFiniteLossError
    from t2t.models.weights import CheckpointError
    from t2t.outputs import OutputError

    assert exit_status(UsageError("x")) == exit_status(OutputError("x")) == EXIT_USAGE
    assert exit_status(ConfigError("x")) == exit_status(CheckpointError("x")) == exit_status(DatasetError("x")) == 2
    assert exit_status(FileNotFoundError("x")) == exit_status(PermissionError("x")) == 2
    assert exit_status(NonFiniteLossError("x")) == 3
    assert exit_status(CheckpointSaveError("x")) == EXIT_IO
    assert exit_status(DistributedSetupError("x")) == 1
    assert exit_status(KeyboardInterrupt()) == EXIT_INTERRUPTED
    assert exit_status(RuntimeError("a bug")) is None and exit_status(ValueError("x")) is None
    train_extra = {OSError: EXIT_IO}  # train.py: a failed write
    assert exit_status(OSError(28, "No space left"), train_extra) == EXIT_IO
    assert exit_status(FileNotFoundError("x"), train_extra) == EXIT_USAGE  # the more specific entry wins
    assert exit_status(ValueError("x"), {ValueError: EXIT_USAGE}) == EXIT_USAGE


def test_run_main_reports_one_line_and_keeps_bugs_loud(capsys):
    def bad():
        raise ConfigError("model.name='x': unknown\nmodel")
    assert run_main("tool.py", bad) == 2
    assert capsys.readouterr().err == "tool.py: error: model.name='x': unknown model\n"

    def interrupted():
        raise KeyboardInterrupt
    assert run_main("tool.py", interrupted, interrupted=lambda: "nothing written") == 130
    assert capsys.readouterr().err == "\ntool.py: interrupted (Ctrl-C): nothing written\n"
    assert run_main("tool.py", lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):
        run_main("tool.py", lambda: 1 // 0)


def test_predict_settings_precedence(tmp_path):
    """predict.py's model and transform: stored config < -c file < section.key=value overrides < flags."""
    _, path = token_label_checkpoint(tmp_path)
    config = tmp_path / "p.yaml"
    config.write_text("eval:\n  crop_pct: 0.8\n  interpolation: bilinear\n")
    loaded = load_model(path, config_file=str(config))
    resize = loaded.transform.transforms[0]
    assert (resize.size, resize.interpolation.value, loaded.config.eval.crop_pct) == (40, "bilinear", 0.8)
    loaded = load_model(path, config_file=str(config), overrides=["eval.crop_pct=1.0", "model.img_size=48"])
    assert (loaded.transform.transforms[0].size, loaded.img_size) == (48, 48)
    loaded = load_model(path, overrides=["model.img_size=48"], img_size=64)
    assert loaded.img_size == 64 and loaded.model.img_size == 64  # the flag wins
    assert load_model(path).transform.transforms[0].size == 35  # stored crop unset: the model's 0.9 (floor(32/0.9))
