"""The paper's other variants (SE, Dense, Ghost): official-layout state dicts load strictly and give the
official function; parameter and MAC counts are those of the official definitions.

The timm conformance checks parametrised over every model (forward/backward, default cfg, TorchScript,
FX, features_only) run on them in test_timm_conformance.py; the ones run there on two base models only
(forward_intermediates, ONNX, torch.export) run here on the variants.
"""
import io
import warnings

import pytest
import timm
import torch

import t2t
from marks import slow_except
from reference_variants import OFFICIAL, official_macs, official_param_count, random_state_dict, reference_forward

NAMES = sorted(OFFICIAL)
QUICK = "t2t_vit_16_ghost"  # the one variant of the quick loop

# Read from the official definitions (tensor by tensor; operation by operation) at 224 px, 1000 classes.
OFFICIAL_COUNTS = {
    "t2t_vit_14_se": (21_803_598, 4_783_726_592),
    "t2t_vit_16_ghost": (16_253_262, 3_801_557_504),
    "t2t_vit_dense": (23_647_062, 5_276_107_968),
}


@pytest.mark.parametrize("name", NAMES)
def test_official_layout_loads_strictly_and_gives_the_official_logits(name):
    model = timm.create_model(name, img_size=64, num_classes=7).eval()
    sd = random_state_dict(name, img_size=64, num_classes=7)
    model.load_state_dict(sd, strict=True)  # every official key, no other
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(name, sd, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_official_checkpoint_through_timm_pretrained_path(name, tmp_path):
    # A training checkpoint as the official code writes it: EMA weights under state_dict_ema, 'module.' keys.
    sd = random_state_dict(name, img_size=64, num_classes=5, seed=1)
    path = tmp_path / "official.pth.tar"
    torch.save({"state_dict_ema": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    model = timm.create_model(name, img_size=64, num_classes=5, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=5)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(name, sd, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_params_and_macs_are_the_official_ones(name):
    params, macs = OFFICIAL_COUNTS[name]
    assert official_param_count(name) == params and official_macs(name) == macs  # the transcription
    model = timm.create_model(name)
    n_all, n_trainable = t2t.count_params(model)
    assert n_all == params
    fixed = model.pos_embed.numel() + sum(m.w.numel() for m in (model.tokens_to_token.attention1,
                                                                 model.tokens_to_token.attention2))
    assert n_trainable == params - fixed
    assert t2t.count_macs(model) == macs


def test_se_macs_are_t2t_vit_14_plus_the_gates():
    # The SE blocks add only the two gate matmuls per block to t2t_vit_14's 4.783 G MACs.
    gates = 14 * 2 * 384 * (384 // 16)
    assert official_macs("t2t_vit_14_se") - gates == t2t.count_macs(timm.create_model("t2t_vit_14"))


def test_dense_widths_follow_the_official_stages():
    model = timm.create_model("t2t_vit_dense", num_classes=0)
    # 3 blocks from 128 by 64, transition to 160; 6 from 160, to 272; 6 from 272, to 328; 4 from 328.
    assert len(model.blocks) == 22 and model.num_features == 584
    assert [i for i, b in enumerate(model.blocks) if type(b).__name__ == "Transition"] == [3, 10, 17]
    assert model.blocks[3].linear.in_features == 320 and model.blocks[17].linear.out_features == 328
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 584)
    model.reset_classifier(3)
    assert model.head.in_features == 584


def test_ghost_mlp_needs_ratio_three():
    with pytest.raises(ValueError, match="mlp_ratio=3"):
        timm.create_model("t2t_vit_16_ghost", img_size=32, depth=1, mlp_ratio=4.0)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_fused_and_explicit_attention_agree(name):
    model = timm.create_model(name, img_size=32, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = model(x)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        torch.testing.assert_close(model(x), fused, rtol=1e-5, atol=1e-5)


def _small(name: str) -> torch.nn.Module:
    kwargs = dict(block_config=(1, 1)) if name == "t2t_vit_dense" else dict(depth=2)
    return timm.create_model(name, img_size=32, num_classes=5, **kwargs).eval()


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_forward_intermediates(name):
    model = _small(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [y.shape[1] for y in intermediates] == [f["num_chs"] for f in model.feature_info]
        assert all(y.shape[2:] == (2, 2) for y in intermediates)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_onnx_legacy_exporter_matches_onnxruntime(name):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _small(name)
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_torch_export(name):
    model = _small(name)
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_cpu_backend_changes_nothing_but_speed(name):
    from t2t.models import cpu

    model = _small(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(cpu.accelerate(model)(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", slow_except(NAMES, QUICK))
def test_inference_tools_load_an_official_layout_file(name, tmp_path):
    from t2t.inference import load_model

    sd = random_state_dict(name, img_size=32, num_classes=4, seed=2)
    path = tmp_path / "official.pth.tar"
    torch.save({"state_dict_ema": sd}, path)
    loaded = load_model(str(path), model_name=name)  # predict.py, validate.py and visualize.py load this way
    assert loaded.img_size == 32 and len(loaded.classes) == 4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), reference_forward(name, sd, x), rtol=1e-4, atol=1e-4)
