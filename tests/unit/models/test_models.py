import math

import pytest
import timm
import torch

import t2t
from marks import slow_except
from reference_t2t import reference_forward
from t2t.models import MODEL_ARCHS, VARIANTS, count_macs, count_params, sinusoid_table

# From the official model code (REFERENCE.md): all parameters, trainable ones, MACs at 224.
EXPECTED = {
    "t2t_vit_7": (4_310_222, 4_255_694, 1.147e9),
    "t2t_vit_10": (5_889_230, 5_834_702, 1.516e9),
    "t2t_vit_12": (6_941_902, 6_887_374, 1.763e9),
    "t2t_vit_14": (21_545_550, 21_465_806, 4.783e9),
    "t2t_vit_19": (39_177_422, 39_085_070, 8.480e9),
    "t2t_vit_24": (64_105_934, 64_000_974, 13.662e9),
    "t2t_vit_t_14": (21_541_070, 21_465_422, 6.089e9),
    "t2t_vit_t_19": (39_172_942, 39_084_686, 9.785e9),
    "t2t_vit_t_24": (64_101_454, 64_000_590, 14.967e9),
    "t2t_vit_14_resnext": (21_545_550, 21_465_806, 4.783e9),
    "t2t_vit_14_wide": (25_156_302, 25_000_910, 5.229e9),
}
ALL = sorted(EXPECTED)


def test_registry_lists_every_variant():
    plain = [n for n in timm.list_models("t2t_vit*") if not n.endswith("_distilled")]
    assert sorted(plain) == sorted(ALL + list(VARIANTS))  # VARIANTS: test_variants.py
    assert sorted(timm.list_models("t2t_vit*_distilled")) == sorted(f"{n}_distilled" for n in ALL)


@pytest.mark.parametrize("name", slow_except(ALL, "t2t_vit_7", "t2t_vit_t_14"))
def test_parameter_counts_and_macs(name):
    model = timm.create_model(name)
    n_all, n_trainable, macs = EXPECTED[name]
    assert count_params(model) == (n_all, n_trainable)
    assert count_macs(model, 224) == pytest.approx(macs, rel=0.01)


@pytest.mark.parametrize("name", slow_except(["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_14_resnext"],
                                             "t2t_vit_7", "t2t_vit_t_14"))
@pytest.mark.parametrize("img_size", slow_except([224, 384], 224))
def test_matches_reference_equations(name, img_size):
    model = timm.create_model(name, img_size=img_size, num_classes=10).eval()
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ours = model(x)
    ref = reference_forward(model.state_dict(), x, num_heads=MODEL_ARCHS[name][3])
    assert ours.shape == (2, 10)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", slow_except(["t2t_vit_7", "t2t_vit_t_14"], "t2t_vit_7"))
def test_gradients_match_reference_equations(name):
    model = timm.create_model(name, img_size=64, num_classes=10).eval()  # eval: no dropout
    x = torch.randn(2, 3, 64, 64)
    model(x).square().sum().backward()
    params = {n: p.detach().clone().requires_grad_(p.requires_grad)
              for n, p in model.state_dict(keep_vars=True).items()}
    forward = reference_forward.__wrapped__  # without its no_grad decorator
    forward(params, x, num_heads=MODEL_ARCHS[name][3]).square().sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, params[n].grad, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("img_size", slow_except([224, 384, 160, 256], 160))
def test_forward_shapes_for_any_multiple_of_16(img_size):
    model = timm.create_model("t2t_vit_7", img_size=img_size, num_classes=7).eval()
    n = (img_size // 16) ** 2
    x = torch.randn(1, 3, img_size, img_size)
    with torch.no_grad():
        assert model.forward_features(x).shape == (1, n + 1, 256)
        assert model(x).shape == (1, 7)
        assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 256)
    assert model.pos_embed.shape == (1, n + 1, 256)


@pytest.mark.parametrize("img_size", [100, 0, -16])
def test_bad_img_size_is_refused(img_size):
    with pytest.raises(ValueError, match=f"img_size={img_size}"):
        timm.create_model("t2t_vit_7", img_size=img_size)


def test_timm_kwargs_are_honoured():
    model = timm.create_model("t2t_vit_14", num_classes=5, drop_path_rate=0.1, drop_rate=0.2)
    assert model.head.out_features == 5
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.blocks[0].mlp.drop1.p == pytest.approx(0.2)
    cfg = model.pretrained_cfg
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic"
    assert model.no_weight_decay() == {"cls_token", "pos_embed"}
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_gradients_reach_every_parameter(name):
    model = timm.create_model(name, num_classes=4, img_size=64)
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    # The fixed tensors are buffers, saved under the official names.
    fixed = {n for n, _ in model.named_buffers()}
    projections = {f"tokens_to_token.attention{i}.w" for i in (1, 2)} if MODEL_ARCHS[name][0] == "performer" else set()
    assert fixed == {"pos_embed"} | projections
    assert fixed <= model.state_dict().keys()


def test_sinusoid_table_matches_formula():
    table = sinusoid_table(5, 8)[0]
    pos, j = 3, 5
    expected = math.cos(pos / 10000 ** (2 * (j // 2) / 8))
    assert table[pos, j].item() == pytest.approx(expected, abs=1e-6)
    assert table[0, 0::2].abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_outputs_are_finite(dtype):
    model = timm.create_model("t2t_vit_7", num_classes=10, img_size=64)
    x = 4 * torch.randn(2, 3, 64, 64)  # large inputs push the random-feature exponent up
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_performer_features_stay_float32_under_autocast():
    layer = t2t.models.TokenPerformer(147, 64)
    seen = []
    for module in (layer.proj, layer.mlp[0]):
        module.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.autocast("cpu", dtype=torch.float16):
        layer(torch.randn(1, 10, 147))
    # The random features, the linear attention and its proj ran in float32; the MLP after them under autocast.
    assert seen == [(torch.float32, torch.float32), (torch.float32, torch.float16)]


def test_grad_checkpointing_gives_same_gradients():
    model = timm.create_model("t2t_vit_7", num_classes=4, img_size=64, drop_rate=0.0)
    x = torch.randn(2, 3, 64, 64)

    def grads():
        torch.manual_seed(1)  # the same dropout masks in both passes
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for n in plain:
        torch.testing.assert_close(plain[n], checkpointed[n], rtol=1e-5, atol=1e-6)


def _saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward after one forward of `model` on `x`."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x).sum()
    return total


@pytest.mark.parametrize("tokens_type, backend", [
    ("performer", False),
    pytest.param("performer", True, marks=pytest.mark.slow),
    pytest.param("transformer", False, marks=pytest.mark.slow)])
def test_grad_checkpointing_covers_the_t2t_module(tokens_type, backend):
    """With checkpointing on, the token layers keep only their inputs; outputs and gradients stay the same."""
    # token-layer dropout 0.1 stays on: the recomputation must replay the same masks
    model = timm.create_model("t2t_vit_7", num_classes=4, img_size=64, depth=2, tokens_type=tokens_type)
    if backend:
        from t2t.models import cpu

        cpu.accelerate(model)
    x = torch.randn(2, 3, 64, 64)

    def run():
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_out, plain = run()
    model.set_grad_checkpointing(True)
    model.tokens_to_token.grad_checkpointing = False
    blocks_only = _saved_bytes(model, x)
    model.set_grad_checkpointing(True)
    assert model.tokens_to_token.grad_checkpointing
    covered = _saved_bytes(model, x)
    assert covered < blocks_only / 2, (covered, blocks_only)
    ckpt_out, checkpointed = run()
    torch.testing.assert_close(ckpt_out, plain_out, rtol=0, atol=0)
    for n in plain:
        torch.testing.assert_close(plain[n], checkpointed[n], rtol=1e-5, atol=1e-6)
    model.set_grad_checkpointing(False)
    assert not model.tokens_to_token.grad_checkpointing
