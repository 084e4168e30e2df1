"""Attention and feature maps recomputed from each layer's own weights (t2t.models.attention_maps)."""
import pytest
import timm
import torch
import torch.nn.functional as F

import t2t  # noqa: F401  (registers the models)
from t2t.models.attention_maps import (
    attention_blocks,
    attention_rollout,
    capture,
    performer_attention,
    token_transformer_attention,
)

SIZE = 64  # a 4 x 4 patch grid; T2T grids 16 x 16 and 8 x 8


def _model(name: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, img_size=SIZE, num_classes=5, **kwargs).eval()


def _manual_block_attention(model, x):
    """softmax(Q K^T / sqrt(d)) of every block, from the weights, running the blocks by hand."""
    maps = []
    t = model._embed(x)
    for block in model.blocks:
        h = F.layer_norm(t, t.shape[-1:], block.norm1.weight, block.norm1.bias, block.norm1.eps)
        B, N, C = h.shape
        H = block.attn.num_heads
        qkv = h @ block.attn.qkv.weight.t()  # qkv has no bias in T2T-ViT
        q, k = qkv[..., :C], qkv[..., C:2 * C]
        q = q.reshape(B, N, H, C // H).transpose(1, 2)
        k = k.reshape(B, N, H, C // H).transpose(1, 2)
        maps.append((q @ k.transpose(-2, -1) / (C // H) ** 0.5).softmax(dim=-1))
        t = block(t)
    return maps


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_block_maps_equal_softmax_qk_from_the_weights_with_fused_attention_on(name):
    model = _model(name, depth=3)
    assert all(b.attn.fused_attn for b in model.blocks)  # the forward never forms the matrix
    x = torch.randn(2, 3, SIZE, SIZE)
    maps = capture(model, x)
    with torch.no_grad():
        expected = _manual_block_attention(model, x)
        torch.testing.assert_close(maps.logits, model(x))
    assert maps.block_indices == [0, 1, 2]
    for got, want in zip(maps.attention, expected):
        assert got.shape == (2, model.blocks[0].attn.num_heads, 17, 17)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.sum(dim=-1), torch.ones(got.shape[:-1]))
    # The class token's row over the patches, on the 4 x 4 grid.
    torch.testing.assert_close(maps.class_attention(1), expected[1][:, :, 0, 1:].reshape(2, -1, 4, 4))


def test_ghost_and_dense_blocks_give_their_own_maps():
    x = torch.randn(1, 3, SIZE, SIZE)
    ghost = _model("t2t_vit_16_ghost", depth=2)
    maps = capture(ghost, x)
    with torch.no_grad():
        t = ghost._embed(x)
        q, k = ghost.blocks[0].attn.query_key(ghost.blocks[0].norm1(t))
        want = (q @ k.transpose(-2, -1) * ghost.blocks[0].attn.scale).softmax(-1)
    torch.testing.assert_close(maps.attention[0], want)
    dense = _model("t2t_vit_dense", block_config=(2, 1))
    maps = capture(dense, x, feature_blocks=[2, 3])
    assert maps.block_indices == [0, 1, 3]  # block 2 is a transition: no attention
    assert [maps.features[i].shape[1] for i in (2, 3)] == [(128 + 128) // 2, 128 + 64]


def test_token_transformer_attention_is_softmax_with_the_input_width_scale():
    model = _model("t2t_vit_t_14", depth=1)
    x = torch.randn(1, 3, SIZE, SIZE)
    maps = capture(model, x, attention=False, t2t=True)
    assert maps.t2t_kind == "softmax"
    assert [a.shape for a in maps.t2t_attention] == [(1, 256, 256), (1, 64, 64)]
    layer = model.tokens_to_token.attention1
    with torch.no_grad():
        tokens = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)  # (1, 256, 147)
        h = layer.norm1(tokens)
        q, k = h @ layer.attn.qkv.weight[:64].t(), h @ layer.attn.qkv.weight[64:128].t()
        want = (q @ k.transpose(1, 2) / 147 ** 0.5).softmax(-1)
        torch.testing.assert_close(token_transformer_attention(layer, tokens), want)
    torch.testing.assert_close(maps.t2t_attention[0], want)
    for a in maps.t2t_attention:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))


def test_performer_implicit_attention_times_v_is_the_layer_output():
    model = _model("t2t_vit_7", depth=1)
    x = torch.randn(2, 3, SIZE, SIZE)
    maps = capture(model, x, attention=False, t2t=True)
    assert maps.t2t_kind == "performer"
    layer = model.tokens_to_token.attention1
    tokens = F.unfold(x, 7, stride=4, padding=2).transpose(1, 2)
    with torch.no_grad():
        attn = performer_attention(layer, tokens)  # (B, T, T)
        torch.testing.assert_close(attn, maps.t2t_attention[0])
        _, _, v = layer.kqv(layer.norm1(tokens)).split(64, dim=-1)
        y = v + layer.proj(attn @ v)  # the layer's linear attention with its v-skip, written with the matrix
        torch.testing.assert_close(y + layer.mlp(layer.norm2(y)), layer(tokens), rtol=1e-4, atol=1e-5)
    rows = attn.sum(-1)
    assert (rows <= 1 + 1e-6).all() and torch.allclose(rows, torch.ones_like(rows), atol=1e-4)  # 1 - eps / (sum + eps)
    assert (attn >= 0).all()


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)  # (B, H, N, N): every token attends to itself
    torch.testing.assert_close(attention_rollout([eye, eye, eye]), torch.eye(5).expand(2, 5, 5))


def test_rollout_mixes_the_residual_and_multiplies_blocks_in_order():
    torch.manual_seed(0)
    a1, a2 = (torch.rand(1, 2, 4, 4).softmax(-1) for _ in range(2))
    eye = torch.eye(4)
    m1 = 0.5 * eye + 0.5 * a1.mean(1)
    m2 = 0.5 * eye + 0.5 * a2.mean(1)
    torch.testing.assert_close(attention_rollout([a1, a2]), m2 @ m1)
    assert not torch.allclose(m2 @ m1, m1 @ m2)  # the order matters, and is tested
    r = attention_rollout([a1, a2])
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 4))


def test_features_are_block_outputs_on_the_patch_grid():
    model = _model("t2t_vit_7", depth=3)
    x = torch.randn(1, 3, SIZE, SIZE)
    maps = capture(model, x, attention=False, feature_blocks=[0, 2])
    with torch.no_grad():
        _, inter = model.forward_intermediates(x, indices=[0, 2])
    for got, want in zip((maps.features[0], maps.features[2]), inter):
        torch.testing.assert_close(got, want)


def test_capture_leaves_no_hooks_behind():
    model = _model("t2t_vit_7", depth=2)
    capture(model, torch.randn(1, 3, SIZE, SIZE), t2t=True, feature_blocks=[1])
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert len(attention_blocks(model)) == 2
