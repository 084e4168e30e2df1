"""scripts/average_checkpoints.py: the mean of the state dicts, read back by the inference tools, never over an input."""
import os

import pytest
import timm
import torch

import t2t  # noqa: F401  (registers the models)
from t2t.config import Config
from t2t.engine.checkpoint import atomic_save
from t2t.inference import load_model
from t2t.tools.average_checkpoints import main
from train_helpers import fake_checkpoint, load


def _checkpoints(folder, n=3):
    """`n` training checkpoints of one tiny model with different weights (EMA and model); their paths."""
    paths = []
    for epoch in range(n):
        torch.manual_seed(epoch)
        model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
        ema = {k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
        ckpt = fake_checkpoint(10 * (epoch + 1), epoch)
        cfg = Config()
        cfg.model.name, cfg.model.img_size = "t2t_vit_7", 32
        ckpt.update(model=model.state_dict(), state_dict_ema=ema, config=cfg.to_dict(),
                    run={"classes": ["a", "b", "c"]})
        path = os.path.join(folder, f"best-epoch-{epoch:04d}-ema_val_top1-{50 + epoch}.000.pth")
        atomic_save(ckpt, path)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_the_average_is_the_mean_of_the_state_dicts_and_the_tools_read_it(tmp_path, capsys):
    paths = _checkpoints(str(tmp_path))
    out = str(tmp_path / "averaged.pth")
    assert main([str(tmp_path), "--output", out]) == 0  # a run folder: its best-epoch-*.pth files
    assert "3 checkpoints averaged (epochs 0, 1, 2)" in capsys.readouterr().out
    averaged = load(out)["state_dict"]
    emas = [load(p)["state_dict_ema"] for p in paths]
    assert list(averaged) == list(emas[0])
    for key, value in averaged.items():
        if value.is_floating_point():
            expected = torch.stack([e[key].double() for e in emas]).mean(0).to(value.dtype)
            assert torch.equal(value, expected), key
        else:
            assert torch.equal(value, emas[0][key])
    assert not torch.equal(averaged["head.weight"], emas[0]["head.weight"])  # the inputs differ: the test can fail
    loaded = load_model(out)  # what validate.py, predict.py and export.py use
    assert loaded.classes == ["a", "b", "c"] and loaded.model_name == "t2t_vit_7" and loaded.img_size == 32
    assert all(torch.equal(v, averaged[k]) for k, v in loaded.model.state_dict().items())

    model_out = str(tmp_path / "model-avg.pth")
    assert main([*paths[:2], "--weights", "model", "--output", model_out]) == 0
    head = torch.stack([load(p)["model"]["head.weight"] for p in paths[:2]]).mean(0)
    torch.testing.assert_close(load(model_out)["state_dict"]["head.weight"], head, rtol=0, atol=1e-7)


def test_never_over_an_input_or_an_existing_file(tmp_path, capsys):
    paths = _checkpoints(str(tmp_path), n=2)
    before = [os.path.getmtime(p) for p in paths]
    assert main([*paths, "--output", paths[1], "--overwrite"]) == 2
    assert "is the same file as checkpoint" in capsys.readouterr().err
    out = tmp_path / "avg.pth"
    out.write_bytes(b"keep me")
    assert main([*paths, "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert main([paths[0], "--output", str(tmp_path / "one.pth")]) == 2  # one file is no average
    assert [os.path.getmtime(p) for p in paths] == before
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(p) for p in paths] + ["avg.pth"])


def test_checkpoints_of_different_models_are_refused(tmp_path, capsys):
    paths = _checkpoints(str(tmp_path), n=2)
    ckpt = load(paths[1])
    ckpt["state_dict_ema"]["head.weight"] = torch.zeros(5, 256)
    atomic_save(ckpt, paths[1])
    assert main([*paths, "--output", str(tmp_path / "avg.pth")]) == 2
    assert "head.weight has shape (5, 256)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "avg.pth")
