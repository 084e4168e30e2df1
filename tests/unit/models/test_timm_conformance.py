"""The plain model as timm's own model tests check a timm model (pytorch-image-models tests/test_models.py):
forward, backward, default cfgs, TorchScript, FX, FX + TorchScript, features_only, forward_intermediates;
plus FLOP counting, torch.compile(fullgraph=True), ONNX (both exporters, onnxruntime) and torch.export.

Small inputs (32 px: a 2 x 2 token grid) and at most 3 blocks keep every variant fast: each keeps its own
token layer, width, heads and MLP ratio, and the blocks it drops are copies of the ones it keeps.
"""
import io
import math
import warnings

import pytest
import timm
import torch
from timm.data import resolve_data_config
from timm.models import create_feature_extractor, get_graph_node_names
from torch.utils.flop_counter import FlopCounterMode

import t2t  # noqa: F401  (registers the models)
from marks import slow_except
from t2t.models import MODEL_ARCHS

# name -> the arguments that cut it to at most 3 blocks, and the widths of those blocks' outputs
SMALL = {name: (dict(depth=min(arch[2], 3)), [arch[1]] * 3) for name, arch in MODEL_ARCHS.items()}
SMALL.update({  # the paper's other variants (t2t/models/t2t_vit_variants.py)
    "t2t_vit_14_se": (dict(depth=3), [384] * 3),
    "t2t_vit_16_ghost": (dict(depth=3), [384] * 3),
    "t2t_vit_dense": (dict(block_config=(1, 1)), [128 + 64, (128 + 64) // 2, 96 + 64]),  # block, transition, block
})
ALL = sorted(SMALL)
TINY = ["t2t_vit_7", "t2t_vit_t_14"]  # one per token layer
SIZE = 32


def _create(name: str, **kwargs) -> torch.nn.Module:
    """timm.create_model at 32 px with at most 3 blocks."""
    kwargs.setdefault("img_size", SIZE)
    return timm.create_model(name, **SMALL[name][0], **kwargs)


def _input(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("name", slow_except(ALL, *TINY))
def test_forward_and_backward_reach_every_parameter(name):
    model = _create(name, num_classes=42).train()
    out = model(_input())
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"No gradient for {n}"


@pytest.mark.parametrize("name", slow_except(ALL, *TINY))
def test_timms_distillation_tasks_accept_the_model(name):
    """timm's tasks read `in_chans` (and num_classes) from the student: every model and its distilled twin."""
    from timm.task import LogitDistillationTask, TokenDistillationTask
    model = _create(name, num_classes=4)
    assert model.in_chans == 3 and _create(name, num_classes=4, in_chans=1).in_chans == 1
    teacher = _create("t2t_vit_7", num_classes=4).eval()
    out = LogitDistillationTask(model, teacher, criterion=torch.nn.CrossEntropyLoss())(_input(), torch.tensor([0, 3]))
    assert out["loss"].isfinite()
    if timm.is_model(name + "_distilled"):
        student = timm.create_model(name + "_distilled", **SMALL[name][0], img_size=SIZE, num_classes=4)
        task = TokenDistillationTask(student, teacher, criterion=torch.nn.CrossEntropyLoss())
        assert student.in_chans == 3 and task(_input(), torch.tensor([0, 3]))["loss"].isfinite()


@pytest.mark.parametrize("name", slow_except(ALL, *TINY))
def test_default_cfg(name):
    model = _create(name).eval()
    cfg, state_dict = model.pretrained_cfg, model.state_dict()
    assert cfg["fixed_input_size"] is True
    for key in ("classifier", "first_conv"):
        assert cfg[key] + ".weight" in state_dict, f"{cfg[key]} not in the state dict"
    x = _input(1)
    n = (SIZE // 16) ** 2
    assert model.forward_features(x).shape == (1, n + 1, model.num_features)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(0, "")
    assert model(x).shape == (1, n + 1, model.num_features)


def test_tagged_cfg_builds_its_input_size():
    # The 384 weights need a 384 model: timm passes the cfg's input size on, as to its ViTs.
    model = timm.create_model("t2t_vit_14.in1k_384", depth=1)
    assert resolve_data_config({}, model=model)["input_size"] == (3, 384, 384)
    assert model.pos_embed.shape == (1, 577, 384)
    assert model.forward_features(torch.randn(1, 3, 384, 384)).shape == (1, 577, 384)
    assert timm.create_model("t2t_vit_14.in1k", depth=1).pos_embed.shape == (1, 197, 384)


@pytest.mark.parametrize("name", slow_except(ALL, *TINY))
def test_torchscript(name):
    model = _create(name).eval()
    x = _input(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated, still used
        scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)


def _fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model traced by torch.fx to its last node, as timm's tests trace (timm's leaf modules)."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes[-1] == eval_nodes[-1]
    return create_feature_extractor(model, [eval_nodes[-1]])


@pytest.mark.parametrize("name", slow_except(ALL, *TINY))
def test_fx_forward_backward(name):
    model = _create(name, num_classes=42).eval()
    x = _input()
    traced = _fx_model(model)
    with torch.no_grad():
        torch.testing.assert_close(tuple(traced(x).values())[0], model(x), rtol=1e-4, atol=1e-5)
    traced.train()
    tuple(traced(x).values())[0].mean().backward()
    for n, p in traced.named_parameters():
        assert p.grad is not None, f"No gradient for {n}"


@pytest.mark.parametrize("name", TINY)
def test_fx_then_torchscript(name):
    model = _create(name).eval()
    x = _input(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_fx_model(model))
    with torch.no_grad():
        torch.testing.assert_close(tuple(scripted(x).values())[0], model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", slow_except(ALL, *TINY))
def test_features_only(name):
    model = _create(name, features_only=True).eval()
    widths = SMALL[name][1]
    assert model.feature_info.channels() == widths and model.feature_info.reduction() == [16] * 3
    assert len(model.model.blocks) == 3  # the last block is kept: it is taken
    outputs = model(_input(1))
    assert [tuple(o.shape) for o in outputs] == [(1, width, SIZE // 16, SIZE // 16) for width in widths]


def test_features_only_prunes_blocks_after_the_last_index():
    model = timm.create_model("t2t_vit_7", img_size=SIZE, features_only=True, out_indices=(1, 3)).eval()
    assert len(model.model.blocks) == 4 and isinstance(model.model.head, torch.nn.Identity)
    assert [o.shape[1] for o in model(_input(1))] == [256, 256]


@pytest.mark.parametrize("name", TINY)
def test_forward_intermediates(name):
    model = timm.create_model(name, img_size=64).eval()
    x = _input(2, 64)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(intermediates) == len(model.blocks)
        assert intermediates[-1].shape == (2, model.embed_dim, 4, 4)
        # Block outputs in token order: the grid is the patch tokens, row-major.
        tokens = model.forward_intermediates(x, indices=[-1], output_fmt="NLC", intermediates_only=True)[0]
        assert tokens.shape == (2, 16, model.embed_dim)
        torch.testing.assert_close(intermediates[-1].flatten(2).transpose(1, 2), tokens)
        normed = model.forward_intermediates(x, indices=1, norm=True, return_prefix_tokens=True,
                                             intermediates_only=True)
        patches, prefix = normed[0]
        torch.testing.assert_close(prefix[:, 0], final[:, 0])
        torch.testing.assert_close(patches.flatten(2).transpose(1, 2), final[:, 1:])
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], intermediates[0])
    with pytest.raises(ValueError, match="indices"):
        model.forward_intermediates(x, indices=[len(model.blocks)])


# From the official model code (REFERENCE.md): MACs at 224.
PAPER_MACS = {"t2t_vit_7": 1.147e9, "t2t_vit_t_14": 6.089e9}


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
@pytest.mark.parametrize("grad", [False, True])
def test_flop_counter_mode_counts_the_paper_macs(name, grad):
    # torch's own counter, as a paper's authors would run it; attention products included.
    model = timm.create_model(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.set_grad_enabled(grad):
        model(torch.zeros(1, 3, 224, 224))
    assert counter.get_total_flops() / 2 == pytest.approx(PAPER_MACS[name], rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_compiles_without_graph_breaks(train, amp):
    # fullgraph=True raises at the first graph break (dynamo's trace, whatever the backend). A 1-block model keeps
    # the compile short. Under autocast the graph is run eagerly: inductor's bfloat16 code for the CPU, a
    # two-minute compile here, is not the code a GPU run compiles.
    torch._dynamo.reset()
    model = timm.create_model("t2t_vit_7", img_size=SIZE, num_classes=4, depth=1).train(train)
    backend = "eager" if amp else "inductor"
    compiled = torch.compile(model, fullgraph=True, dynamic=False, backend=backend)
    x = _input()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp), torch.set_grad_enabled(train):
        torch.manual_seed(0)
        out = compiled(x)
        if not train:
            expected = model(x)
            tolerance = 2e-2 if amp else 1e-4
            torch.testing.assert_close(out.float(), expected.float(), rtol=tolerance, atol=tolerance)
    if train:
        out.float().sum().backward()
        assert all(p.grad is not None for p in model.parameters())


def _onnxruntime_logits(onnx_bytes: bytes, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.slow  # an ONNX export and an onnxruntime session per model (2 s)
@pytest.mark.parametrize("name", TINY)
def test_onnx_legacy_exporter_matches_onnxruntime(name):
    pytest.importorskip("onnx")
    model = timm.create_model(name, img_size=SIZE, num_classes=5).eval()
    x = _input()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17)
    with torch.no_grad():
        torch.testing.assert_close(_onnxruntime_logits(buffer.getvalue(), x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_onnx_dynamo_exporter_matches_onnxruntime(name, tmp_path):
    pytest.importorskip("onnxscript")
    model = timm.create_model(name, img_size=SIZE, num_classes=5, depth=1).eval()
    x = _input()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    program.save(str(tmp_path / "model.onnx"))
    with torch.no_grad():
        torch.testing.assert_close(_onnxruntime_logits(str(tmp_path / "model.onnx"), x), model(x),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_torch_export(name):
    model = timm.create_model(name, img_size=SIZE, num_classes=5, depth=1).eval()
    x = _input()
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)
    assert math.isclose(sum(p.numel() for p in program.parameters()), sum(p.numel() for p in model.parameters()))
