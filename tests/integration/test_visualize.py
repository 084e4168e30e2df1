"""scripts/visualize.py (t2t.visualize): the files it writes, their determinism, its errors, and the batch view."""
import os

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import t2t  # noqa: F401
from t2t.visualize import main

pytest.importorskip("matplotlib")

SIZE = 32


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("t2t_vit_7", img_size=SIZE, num_classes=3)
    path = tmp_path / "w.pth"
    torch.save({"state_dict_ema": model.state_dict()}, path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / name)
    return str(folder)


def _files(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _args(weights, images, out, *extra):
    return ["--model", "t2t_vit_7", "--weights", weights, "--images", images, "--output", str(out),
            "--blocks", "0,-1", "--heads", "0,2", "--channels", "3", *extra]


def test_writes_every_view_with_raw_maps_and_the_same_bytes_twice(weights, images, tmp_path, capsys):
    assert main(_args(weights, images, tmp_path / "one")) == 0
    assert main(_args(weights, images, tmp_path / "two")) == 0
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    expected = set()
    for stem in ("a", "b"):
        expected |= {f"{stem}_attention.png", f"{stem}_attention.npy", f"{stem}_rollout.png", f"{stem}_rollout.npy",
                     f"{stem}_t2t.png", f"{stem}_t2t_layer1.npy", f"{stem}_t2t_layer2.npy", f"{stem}_features.png",
                     f"{stem}_features_block0.npy", f"{stem}_features_block6.npy"}
    assert set(one) == expected
    assert one == two  # deterministic, byte for byte
    assert all(data.startswith(b"\x89PNG") for name, data in one.items() if name.endswith(".png"))
    assert b"Software" not in one["a_attention.png"]  # no matplotlib version in the metadata
    attention = np.load(tmp_path / "one" / "a_attention.npy")
    assert attention.shape == (2, 4, 2, 2)  # blocks 0 and 6, every head, the 2 x 2 patch grid
    share = attention.sum(axis=(2, 3))  # the patches' share of the class token's row; the rest is on itself
    assert ((share > 0) & (share <= 1 + 1e-6)).all()
    t2t_map = np.load(tmp_path / "one" / "a_t2t_layer1.npy")
    assert t2t_map.shape == (64, 64) and t2t_map.dtype == np.float16
    assert np.load(tmp_path / "one" / "a_rollout.npy").shape == (2, 2)


def test_class_attention_file_is_the_models_attention(weights, images, tmp_path):
    from t2t.inference import load_model
    from t2t.models.attention_maps import capture

    assert main(_args(weights, images, tmp_path / "o", "--what", "attention")) == 0
    loaded = load_model(weights, model_name="t2t_vit_7")
    with Image.open(os.path.join(images, "a.png")) as img:
        x = loaded.transform(img.convert("RGB")).unsqueeze(0)
    maps = capture(loaded.model, x)
    want = torch.stack([maps.class_attention(0)[0], maps.class_attention(6)[0]]).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "a_attention.npy"), want)


def test_existing_outputs_are_kept_unless_overwrite(weights, images, tmp_path, capsys):
    out = tmp_path / "o"
    args = _args(weights, images, out, "--what", "rollout")
    assert main(args) == 0
    before = _files(out)
    (out / "a_rollout.png").write_bytes(b"mine")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a_rollout" in err and "--overwrite" in err
    assert (out / "a_rollout.png").read_bytes() == b"mine"
    assert main(args + ["--overwrite"]) == 0
    assert _files(out) == before
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_an_input_image_is_never_overwritten(weights, images, tmp_path, capsys):
    # An image named like an output, in the output folder: refused even with --overwrite.
    clash = os.path.join(images, "a_rollout.png")
    Image.new("RGB", (40, 40)).save(clash)
    before = open(clash, "rb").read()
    assert main(["--model", "t2t_vit_7", "--weights", weights, "--images", images, "--output", images,
                 "--what", "rollout", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "a_rollout.png" in err and "overwritten" in err
    assert open(clash, "rb").read() == before


@pytest.mark.parametrize("extra, message", [
    (["--what", "attention,colours"], "--what 'attention,colours'"),
    (["--blocks", "0,9"], "--blocks '0,9': 9 is out of range"),
    (["--heads", "x"], "--heads 'x'"),
    (["--channels", "0"], "--channels 0"),
])
def test_bad_arguments_give_one_line_and_status_2(weights, images, tmp_path, capsys, extra, message):
    args = _args(weights, images, tmp_path / "o")
    for flag in ("--blocks", "--heads", "--channels"):  # the case's own value replaces the default one
        if flag in extra:
            i = args.index(flag)
            del args[i:i + 2]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_missing_inputs_give_one_line(tmp_path, images, capsys):
    assert main(["--model", "t2t_vit_7", "--weights", str(tmp_path / "none.pth"), "--images", images,
                 "--output", str(tmp_path / "o")]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert main(["--images", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), "--model", "t2t_vit_7"]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["--images", images, "--output", str(tmp_path / "o")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["--what", "batch", "--output", str(tmp_path / "o")]) == 2
    assert "config" in capsys.readouterr().err


@pytest.mark.slow
def test_batch_is_the_first_batch_training_sees(tmp_path, monkeypatch):
    # Train one step in-process and record what the model is fed; the batch view must be that batch.
    from t2t.config import load_config
    from t2t.engine.run import run
    from t2t.visualize import first_batch
    from train_helpers import make_data, write_config

    data = make_data(str(tmp_path / "data"))
    config = write_config(str(tmp_path))  # RandAugment, random erasing, mixup and cutmix
    cfg = load_config(config, ["train.max_steps=1", "data.workers=1"])
    seen = []
    create = timm.create_model

    def recording_create(*args, **kwargs):
        model = create(*args, **kwargs)
        model.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].clone()) if m.training else None)
        return model

    monkeypatch.setattr(timm, "create_model", recording_create)
    run(cfg, data_dir=data, output=str(tmp_path / "run"))
    monkeypatch.undo()
    batch = first_batch(cfg, data)
    assert batch.mixup and batch.targets.shape == (4, 3)
    torch.testing.assert_close(batch.images, seen[0], rtol=0, atol=0)
    other = first_batch(cfg, data, rank=1, world_size=2)
    assert other.images.shape == batch.images.shape and not torch.equal(other.images, batch.images)

    out = tmp_path / "vis"
    assert main(["--config", config, "--data-dir", data, "--what", "batch", "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["batch.png", "batch_images.npy", "batch_targets.npy"]
    np.testing.assert_array_equal(np.load(out / "batch_targets.npy"), first_batch(load_config(config), data).targets)
    # Overrides, as train.py takes them: without mixup the targets are one-hot, label-smoothed.
    assert main(["--config", config, "--data-dir", data, "--what", "batch", "--output", str(out), "--overwrite",
                 "--set", "mixup.mixup_alpha=0", "mixup.cutmix_alpha=0"]) == 0
    targets = np.load(out / "batch_targets.npy")
    assert np.allclose(targets.max(axis=1), 0.9 + 0.1 / 3)
