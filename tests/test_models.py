import math

import pytest
import timm
import torch

import t2t
from t2t.models import MODEL_ARCHS, T2TViT, count_macs, count_params, sinusoid_table
from reference_t2t import reference_forward

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
    assert sorted(timm.list_models("t2t_vit*")) == ALL


@pytest.mark.parametrize("name", ALL)
def test_parameter_counts_and_macs(name):
    model = timm.create_model(name)
    n_all, n_trainable, macs = EXPECTED[name]
    assert count_params(model) == (n_all, n_trainable)
    assert count_macs(model, 224) == pytest.approx(macs, rel=0.01)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_14_resnext"])
@pytest.mark.parametrize("img_size", [224, 384])
def test_matches_reference_equations(name, img_size):
    model = timm.create_model(name, img_size=img_size, num_classes=10).eval()
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ours = model(x)
    ref = reference_forward(model.state_dict(), x, num_heads=MODEL_ARCHS[name][3])
    assert ours.shape == (2, 10)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_gradients_match_reference_equations(name):
    # The token layers fold LayerNorm into the next Linear, gather patches in another feature order
    # and have a hand-written soft-split backward: the gradients must still be those of the equations.
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


def _output_and_grads(module, forward, x):
    """forward(x) and the gradients of sum(forward(x)^2) for every parameter of module that gets one."""
    module.zero_grad(set_to_none=True)
    out = forward(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_chunked_t2t_module_matches_one_pass(monkeypatch):
    # On the CPU the T2T module runs a few images at a time; outputs and gradients must not change.
    model = timm.create_model("t2t_vit_7", img_size=64, num_classes=10).eval()  # eval: no dropout masks
    x = torch.randn(5, 3, 64, 64)
    expected, expected_grads = _output_and_grads(model, model, x)  # 5 images, well under one chunk at 64 px
    monkeypatch.setattr(t2t.models.t2t_vit, "_TOKENS_PER_CHUNK", 2 * 16 * 16)  # 2 images of 64 px: 3 chunks
    logits, grads = _output_and_grads(model, model, x)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for n in grads:
        torch.testing.assert_close(grads[n], expected_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_convolved_t2t_module_is_exact_for_flat_patches(name):
    # On the CPU in float32 each soft split and the Linear after it run as one convolution, with the
    # LayerNorm's statistics pooled per patch. Patches whose mean is large against their spread (a flat
    # image region) are where E[x^2] - E[x]^2 in float32 would fail (errors ~1e-2 here).
    model = timm.create_model(name, img_size=64, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    x[0] = 3 + 0.01 * x[0]
    exact = reference_forward({k: v.double() for k, v in model.state_dict().items()}, x.double(),
                              num_heads=MODEL_ARCHS[name][3])
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), exact, rtol=0, atol=2e-5)


@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
def test_convolved_t2t_module_matches_gathered(tokens_type):
    # Elsewhere (CUDA, autocast) the patches are gathered: the same function, outputs and gradients.
    module = t2t.models.t2t_vit.T2TModule(64, tokens_type, embed_dim=32).eval()
    x = torch.randn(2, 3, 64, 64)
    out, grads = _output_and_grads(module, module._forward_convolved, x)
    expected, expected_grads = _output_and_grads(module, module._forward_gathered, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and len(grads) > 10
    for n in grads:  # float32 summation order: errors relative to the largest entry
        scale = expected_grads[n].abs().max().item()
        torch.testing.assert_close(grads[n], expected_grads[n], rtol=1e-4, atol=1e-5 * scale, msg=n)


@pytest.mark.parametrize("img_size", [224, 384, 160, 256])
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
def test_gradients_reach_every_trainable_parameter_only(name):
    model = timm.create_model(name, num_classes=4, img_size=64)
    model(torch.randn(2, 3, 64, 64)).logsumexp(-1).sum().backward()
    for pname, p in model.named_parameters():
        if pname == "pos_embed" or pname.endswith(".w"):
            assert not p.requires_grad and p.grad is None, pname
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname


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
    kqv = torch.randn(1, 10, 192, dtype=torch.float16)
    with torch.autocast("cpu", dtype=torch.float16):
        y, v = layer._linear_attention(kqv)
    assert y.dtype == torch.float32 and v.dtype == torch.float32


def test_grad_checkpointing_gives_same_gradients():
    model = timm.create_model("t2t_vit_7", num_classes=4, img_size=64, drop_rate=0.0)
    x = torch.randn(2, 3, 64, 64)

    def grads():
        torch.manual_seed(1)  # the same dropout masks in both passes
        return _output_and_grads(model, model, x)[1]

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for n in plain:
        torch.testing.assert_close(plain[n], checkpointed[n], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_works_under_torch_compile():
    model = timm.create_model("t2t_vit_7", num_classes=4, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)


def test_cpu_dropout_mask():
    # The Performer dropouts draw their CPU mask from 16-bit integers: p rounds to a multiple of 2^-16.
    drop = t2t.models.layers.Dropout(0.1).train()
    x = torch.ones(64, 128, 128, requires_grad=True)
    torch.manual_seed(0)
    y = drop(x)
    p = round(0.1 * 65536) / 65536
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / y.numel())
    assert y.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the mask
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)  # the global generator decides: seeded runs repeat
    assert not torch.equal(drop(x), y)
    assert drop(torch.ones(3, 5)).shape == (3, 5)  # sizes that are not a multiple of 4
    assert torch.equal(drop.eval()(x), x)


def test_gelu_overwrites_its_input_only_without_autograd():
    act, x = t2t.models.layers.GELU(), torch.randn(4, 8)
    expected = torch.nn.functional.gelu(x)
    y = act(x.clone().requires_grad_())  # autograd: a new tensor, the gradient of GELU
    torch.testing.assert_close(y.detach(), expected)
    with torch.no_grad():
        z = x.clone()
        assert act(z) is z
        torch.testing.assert_close(z, expected)
    model = timm.create_model("t2t_vit_7", img_size=64, num_classes=4)
    assert all(type(m) is not torch.nn.GELU for m in model.modules())


def test_cpu_linear_matches_nn_linear(monkeypatch):
    # On the CPU in float32 the model's linears run on oneDNN: same outputs and gradients.
    convolutions = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(t2t.models.layers.F, "conv2d", lambda *a, **k: convolutions.append(1) or conv2d(*a, **k))
    ref = torch.nn.Linear(48, 24)
    lin = t2t.models.layers.Linear(48, 24)
    lin.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, 48)
    views = ((lambda t: t, True), (lambda t: t.transpose(0, 1), True), (lambda t: t[:, 0], False))
    for view, convolved in views:  # rows that are not contiguous after reshape take F.linear
        convolutions.clear()
        results = []
        for layer in (lin, ref):
            layer.zero_grad(set_to_none=True)
            leaf = x.clone().requires_grad_()
            out = layer(view(leaf))
            out.square().sum().backward()
            results.append((out.detach(), leaf.grad, layer.weight.grad, layer.bias.grad))
        assert bool(convolutions) == convolved
        for got, expected in zip(*results):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # without autograd: oneDNN's linear on a packed copy of the weight
        convolutions.clear()
        torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-5)
        assert not convolutions
        for layer in (lin, ref):  # an in-place update (optimizer, EMA, load_state_dict) repacks
            layer.weight.mul_(-2)
        torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-5)
        lin.weight = torch.nn.Parameter(ref.weight.flip(0).clone())  # so does a new tensor
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, ref.weight.flip(0), ref.bias))
    assert lin.state_dict().keys() == ref.state_dict().keys()
    model = timm.create_model("t2t_vit_7", img_size=64, num_classes=4)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    model.reset_classifier(7)
    assert type(model.head) is t2t.models.layers.Linear
