"""Token labels: the crop of a score map follows the image's crop and flip; MixToken boxes and targets."""
import numpy as np
import pytest
import torch

from t2t.data.token_label import (
    crop_label_map,
    dense_scores,
    label_path,
    mix_token,
    read_label_map,
    save_label_map,
    token_box,
)


def _linear_map(coef, xs, ys):
    """Scores f_c(x, y) = a_c x + b_c y + d_c at image coordinates (fractions), laid out (C, len(ys), len(xs))."""
    a, b, d = coef
    return a[:, None, None] * xs[None, None, :] + b[:, None, None] * ys[None, :, None] + d[:, None, None]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("box", [(0.0, 0.0, 1.0, 1.0), (0.1, 0.25, 0.7, 0.9), (0.4, 0.05, 0.95, 0.5)])
def test_crop_of_the_map_is_the_map_of_the_crop(box, flip):
    g = torch.Generator().manual_seed(0)
    C, H, S = 6, 28, 7
    coef = [torch.randn(C, generator=g) for _ in range(3)]
    centres = (torch.arange(H) + 0.5) / H
    full = _linear_map(coef, centres, centres)  # the teacher's map of the whole image
    top, left, bottom, right = box
    xs = left + (torch.arange(S) + 0.5) / S * (right - left)  # the map of the cropped image
    ys = top + (torch.arange(S) + 0.5) / S * (bottom - top)
    want = _linear_map(coef, xs, ys)
    if flip:
        want = want.flip(-1)
    cls, dense = crop_label_map(full, box, S, flip=flip)
    torch.testing.assert_close(dense, want.flatten(1).t().softmax(-1), atol=2e-3, rtol=0)
    mid = _linear_map(coef, torch.tensor([(left + right) / 2]), torch.tensor([(top + bottom) / 2]))[:, 0, 0]
    torch.testing.assert_close(cls, mid.softmax(-1), atol=2e-3, rtol=0)  # the pooled crop of a linear map


def test_smoothing_rows_sum_to_one_plus_s_over_c():
    """TokenLabeling's smoothing (p * (1 - s + s / C) + s / C): rows sum to 1 + s / C, every entry >= s / C."""
    cls, dense = crop_label_map(torch.randn(5, 4, 4), (0, 0, 1, 1), 2, smoothing=0.1)
    torch.testing.assert_close(dense.sum(-1), torch.full((4,), 1 + 0.1 / 5))
    assert float(cls.sum()) == pytest.approx(1 + 0.1 / 5) and float(dense.min()) >= 0.1 / 5 - 1e-7


def test_label_file_round_trip_and_tokenlabeling_layout(tmp_path):
    values = torch.randn(3, 4, 4)
    indices = torch.argsort(torch.rand(10, 4, 4), dim=0)[:3]  # distinct classes at each location, as top-k gives
    path = label_path(str(tmp_path), "cat/img_001.JPEG")
    assert path == str(tmp_path / "cat" / "img_001.pt")
    save_label_map(path, values, indices)
    v, i = read_label_map(path)
    torch.testing.assert_close(v, values.half().float())
    assert torch.equal(i, indices)
    torch.save(torch.stack([values.half(), indices.half()]), tmp_path / "theirs.pt")  # TokenLabeling's file
    v2, i2 = read_label_map(str(tmp_path / "theirs.pt"))
    assert torch.equal(i2, indices)
    scores = dense_scores(v, i, 10)
    assert scores.shape == (10, 4, 4)
    assert torch.equal(scores.gather(0, indices), v)


def test_token_box_is_on_the_grid_and_sized_by_lambda():
    rng = np.random.default_rng(0)
    for lam in (0.0, 0.3, 0.75, 1.0):
        for _ in range(20):
            top, left, bottom, right = token_box(14, lam, rng)
            assert 0 <= top <= bottom <= 14 and 0 <= left <= right <= 14
            assert bottom - top <= 14 * np.sqrt(1 - lam) and right - left <= 14 * np.sqrt(1 - lam)


def test_mix_token_boxes_align_with_patches_and_targets_sum_to_one():
    rng = np.random.default_rng(3)
    B, G, P, C = 4, 4, 16, 5
    images = torch.arange(B, dtype=torch.float32)[:, None, None, None].expand(B, 3, G * P, G * P).clone()
    cls_t = torch.softmax(torch.randn(B, C), -1)
    dense_t = torch.softmax(torch.randn(B, G * G, C), -1)
    seen_mixed = False
    for _ in range(10):
        out, cls_m, dense_m, (top, left, bottom, right) = mix_token(images, cls_t, dense_t, alpha=1.0, rng=rng)
        inside = torch.zeros(G * P, G * P, dtype=torch.bool)
        inside[top * P:bottom * P, left * P:right * P] = True
        for b in range(B):  # pixels: the other image inside the box (whole patches), this one outside
            assert torch.equal(out[b][:, inside], torch.full_like(out[b][:, inside], B - 1 - b))
            assert torch.equal(out[b][:, ~inside], torch.full_like(out[b][:, ~inside], b))
        tokens_in = torch.zeros(G, G, dtype=torch.bool)
        tokens_in[top:bottom, left:right] = True
        tokens_in = tokens_in.flatten()
        assert torch.equal(dense_m[:, tokens_in], dense_t.flip(0)[:, tokens_in])
        assert torch.equal(dense_m[:, ~tokens_in], dense_t[:, ~tokens_in])
        lam = 1 - float(tokens_in.sum()) / (G * G)
        torch.testing.assert_close(cls_m, lam * cls_t + (1 - lam) * cls_t.flip(0))
        torch.testing.assert_close(cls_m.sum(-1), torch.ones(B))
        torch.testing.assert_close(dense_m.sum(-1), torch.ones(B, G * G))
        seen_mixed |= bool(tokens_in.any())
    assert seen_mixed
    assert torch.equal(images[1], torch.ones(3, G * P, G * P))  # inputs untouched


def test_mix_token_draws_from_the_reseeded_global_rng():
    images, cls_t, dense_t = torch.randn(2, 3, 64, 64), torch.rand(2, 3), torch.rand(2, 16, 3)
    np.random.seed(7)
    a = mix_token(images, cls_t, dense_t)
    np.random.seed(7)
    b = mix_token(images, cls_t, dense_t)
    assert a[3] == b[3] and torch.equal(a[0], b[0])
