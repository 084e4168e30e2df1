"""t2t.models.cpu.accelerate: the same function, parameters and gradients as the plain model."""
import copy

import pytest
import timm
import torch

import t2t
from marks import slow_except
from reference_t2t import reference_forward
from t2t.models import MODEL_ARCHS, cpu


def _output_and_grads(model, x):
    """model(x) and the gradients of sum(model(x)^2) for every parameter."""
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_grads_close(grads, expected):
    assert grads.keys() == expected.keys()
    for n in grads:  # float32 summation order: errors relative to the largest entry
        scale = expected[n].abs().max().item()
        torch.testing.assert_close(grads[n], expected[n], rtol=1e-4, atol=1e-5 * scale, msg=n)


@pytest.mark.parametrize("name", slow_except(["t2t_vit_7", "t2t_vit_t_14"], "t2t_vit_7"))
def test_accelerated_model_matches_plain(name):
    plain = timm.create_model(name, img_size=64, num_classes=10).eval()  # eval: no dropout masks
    fast = cpu.accelerate(copy.deepcopy(plain))
    assert {type(m) for m in fast.modules()} >= {cpu.OneDnnLinear, cpu.InplaceGELU, cpu.ConvolvedT2TModule}
    assert not any(type(m) in (torch.nn.Linear, torch.nn.GELU, t2t.models.T2TModule) for m in fast.modules())
    layers = fast.tokens_to_token.attention1, fast.tokens_to_token.attention2
    assert all(type(layer) in cpu.PROJECTED_LAYERS.values() for layer in layers)  # the t2t trick's token layers
    state, fast_state = plain.state_dict(), fast.state_dict()
    assert list(fast_state) == list(state) and all(torch.equal(fast_state[k], state[k]) for k in state)

    x = torch.randn(3, 3, 64, 64)
    expected, expected_grads = _output_and_grads(plain, x)
    out, grads = _output_and_grads(fast, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    _assert_grads_close(grads, expected_grads)
    with torch.inference_mode():  # the packed linears and in-place GELUs
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
    cpu.restore(fast)
    assert [type(m) for m in fast.modules()] == [type(m) for m in plain.modules()]


def test_accelerated_model_trains_like_plain_under_dropout():
    # Training mode: dropout and drop-path draw from the same generator in the same order.
    plain = timm.create_model("t2t_vit_7", img_size=64, num_classes=10, drop_path_rate=0.1)
    fast = cpu.accelerate(copy.deepcopy(plain))
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(3)
    expected, expected_grads = _output_and_grads(plain, x)
    torch.manual_seed(3)
    out, grads = _output_and_grads(fast, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    _assert_grads_close(grads, expected_grads)


def test_chunked_t2t_module_matches_one_pass(monkeypatch):
    # The converted T2T module runs a few images at a time; outputs and gradients must not change.
    model = cpu.accelerate(timm.create_model("t2t_vit_7", img_size=64, num_classes=10).eval())
    x = torch.randn(5, 3, 64, 64)
    expected, expected_grads = _output_and_grads(model, x)  # 5 images, well under one chunk at 64 px
    calls = []
    forward = cpu.ConvolvedT2TModule._forward_convolved
    monkeypatch.setattr(cpu.ConvolvedT2TModule, "_forward_convolved", lambda self, x: calls.append(len(x)) or forward(self, x))
    monkeypatch.setattr(cpu, "TOKENS_PER_CHUNK", 2 * 16 * 16)  # 2 images of 64 px: 3 chunks
    logits, grads = _output_and_grads(model, x)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    _assert_grads_close(grads, expected_grads)


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_convolved_t2t_module_is_exact_for_flat_patches(name):
    # The LayerNorm's statistics are pooled per patch. Patches whose mean is large against their spread
    # (a flat image region) are where E[x^2] - E[x]^2 in float32 would fail (errors ~1e-2 here).
    model = cpu.accelerate(timm.create_model(name, img_size=64, num_classes=10).eval())
    x = torch.randn(2, 3, 64, 64)
    x[0] = 3 + 0.01 * x[0]
    exact = reference_forward({k: v.double() for k, v in model.state_dict().items()}, x.double(),
                              num_heads=MODEL_ARCHS[name][3])
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), exact, rtol=0, atol=2e-5)


def test_tricks_step_aside_outside_float32_cpu(monkeypatch):
    # Under autocast (and on other devices or dtypes) the converted modules run the plain code.
    model = cpu.accelerate(timm.create_model("t2t_vit_7", img_size=64, num_classes=4).eval())
    calls = []
    monkeypatch.setattr(cpu, "patch_norm_linear", lambda *a, **k: calls.append(1))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    assert not calls


def test_linear_packed_and_convolved_paths_match_nn_linear(monkeypatch):
    convolutions = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(cpu.F, "conv2d", lambda *a, **k: convolutions.append(1) or conv2d(*a, **k))
    ref = torch.nn.Linear(48, 24)
    lin = cpu.accelerate(copy.deepcopy(ref))
    assert type(lin) is cpu.OneDnnLinear
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


@pytest.mark.parametrize("missing", ["_linear_pointwise", "_reorder_linear_weight"])
def test_linear_falls_back_when_a_private_op_is_missing(monkeypatch, missing):
    # A torch without one of oneDNN's private ops: the packed path is skipped, the 1x1 convolution runs.
    real = cpu._onednn_op
    monkeypatch.setattr(cpu, "_onednn_op", lambda name: None if name == missing else real(name))
    monkeypatch.setattr(cpu, "_PACKED_WEIGHTS", type(cpu._PACKED_WEIGHTS)())
    convolutions = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(cpu.F, "conv2d", lambda *a, **k: convolutions.append(1) or conv2d(*a, **k))
    ref = torch.nn.Linear(16, 8)
    lin = cpu.accelerate(copy.deepcopy(ref))
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), ref(x), rtol=1e-5, atol=1e-5)
    assert convolutions == [1]
    assert len(cpu._PACKED_WEIGHTS) == 0


def test_gelu_overwrites_its_input_only_without_autograd():
    act, x = cpu.accelerate(torch.nn.GELU()), torch.randn(4, 8)
    expected = torch.nn.functional.gelu(x)
    y = act(x.clone().requires_grad_())  # autograd: a new tensor, the gradient of GELU
    torch.testing.assert_close(y.detach(), expected)
    with torch.no_grad():
        z = x.clone()
        assert act(z) is z
        torch.testing.assert_close(z, expected)


def test_flop_counter_still_counts_the_accelerated_model():
    model = timm.create_model("t2t_vit_7", img_size=64, num_classes=10)
    plain = t2t.count_macs(model, 64)
    assert t2t.count_macs(cpu.accelerate(model), 64) == pytest.approx(plain, rel=0.01)


def test_unknown_trick_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        cpu.accelerate(torch.nn.Linear(2, 2), tricks=("linear", "fast"))


def test_apply_backend_only_in_float32_cpu_runs_that_ask_for_it():
    def converted(setting, device, amp):
        model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        applied = cpu.apply_backend(model, setting, torch.device(device), amp)
        assert applied == (type(model[0]) is cpu.OneDnnLinear)
        return applied

    assert converted(True, "cpu", "none")
    assert not converted(False, "cpu", "none")
    assert not converted(True, "cpu", "bf16")
    assert not converted(True, "meta", "none")


def test_config_key_is_checked():
    from t2t.config import ConfigError, load_config

    assert load_config().model.cpu_backend is False
    assert load_config(overrides=["model.cpu_backend=true"]).model.cpu_backend is True
    with pytest.raises(ConfigError, match="model.cpu_backend"):
        load_config(overrides=["model.cpu_backend=fast"])
