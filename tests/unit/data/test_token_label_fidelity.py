"""Token-label targets and MixToken against TokenLabeling's rules, computed by hand on small maps.

TokenLabeling (zihangJiang/TokenLabeling): the crop is torchvision's RoIAlign with its defaults
(sampling_ratio=-1, aligned=False) on the box in map cells moved by -0.5, softmax, then
p * (1 - s + s / C) + s / C; MixToken's box has half-side int(G * sqrt(1 - lam)) // 2 around a centre
drawn row first, then column, after lam ~ Beta(1, 1), all from NumPy's global RNG.
"""
import math

import numpy as np
import pytest
import torch

from t2t.data.token_label import crop_label_map, label_targets, mix_token, token_box


def _bilinear(m, y, x):
    """One RoIAlign sample of the 2-D list `m` at (y, x), pixel k's value sitting at coordinate k."""
    h, w = len(m), len(m[0])
    if y < -1 or y > h or x < -1 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return ((1 - ly) * (1 - lx) * m[y0][x0] + (1 - ly) * lx * m[y0][x1]
            + ly * (1 - lx) * m[y1][x0] + ly * lx * m[y1][x1])


def _tokenlabeling_crop(m, box, grid):
    """TokenLabeling's RoIAlign of one (H, W) map (lists), with the box in the image's order (top, left, bottom,
    right): cell (i, j) averages ceil(side / grid) x ceil(side / grid) samples evenly spaced inside it."""
    h, w = len(m), len(m[0])
    top, left, bottom, right = box
    y_start, x_start = top * h - 0.5, left * w - 0.5
    roi_h = max(bottom * h - 0.5 - y_start, 1.0)
    roi_w = max(right * w - 0.5 - x_start, 1.0)
    bin_h, bin_w = roi_h / grid, roi_w / grid
    n_h, n_w = math.ceil(roi_h / grid), math.ceil(roi_w / grid)
    out = [[0.0] * grid for _ in range(grid)]
    for i in range(grid):
        for j in range(grid):
            total = 0.0
            for a in range(n_h):
                for b in range(n_w):
                    total += _bilinear(m, y_start + i * bin_h + (a + 0.5) * bin_h / n_h,
                                       x_start + j * bin_w + (b + 0.5) * bin_w / n_w)
            out[i][j] = total / (n_h * n_w)
    return out


def _targets(scores, box, grid, **kw):
    return crop_label_map(scores, box, grid, **kw)


def test_full_crop_on_a_grid_of_the_map_size_is_the_map_itself():
    scores = torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(0))
    cls, dense = _targets(scores, (0.0, 0.0, 1.0, 1.0), 4)
    assert torch.equal(dense, scores.flatten(1).t().softmax(-1))  # one sample at each cell centre: no blur
    torch.testing.assert_close(cls, scores.mean(dim=(1, 2)).softmax(-1))  # 4 x 4 samples at the pixel centres


def test_off_centre_crop_takes_the_cell_centres_of_the_right_box():
    scores = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    box = (0.25, 0.0, 0.75, 0.5)  # rows 1-2, columns 0-1 of the map
    cls, dense = _targets(scores, box, 2)
    assert torch.equal(dense, scores[:, 1:3, 0:2].flatten(1).t().softmax(-1))
    # TokenLabeling's transposed box would have cut rows 0-1, columns 1-2: a different target.
    assert not torch.allclose(dense, scores[:, 0:2, 1:3].flatten(1).t().softmax(-1))
    torch.testing.assert_close(cls, scores[:, 1:3, 0:2].mean(dim=(1, 2)).softmax(-1))


def test_a_grid_coarser_than_the_crop_averages_ceil_samples_per_side():
    """Not always one sample: TokenLabeling's RoIAlign (sampling_ratio=-1) takes ceil(side / grid) per side."""
    scores = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(2))
    _, dense = _targets(scores, (0.0, 0.0, 1.0, 1.0), 2)
    blocks = scores.view(2, 2, 2, 2, 2).mean(dim=(2, 4))  # (C, 2, 2): the mean of each 2 x 2 block
    torch.testing.assert_close(dense, blocks.flatten(1).t().softmax(-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("grid", [2, 3, 4, 7])
def test_random_crops_match_the_hand_computation_of_tokenlabelings_sampling(grid):
    rng = np.random.default_rng(grid)
    m = rng.normal(size=(5, 6)).tolist()  # one class, a non-square map
    scores = torch.tensor([m, [[0.0] * 6] * 5], dtype=torch.float32)  # a second class at 0: softmax = sigmoid
    for _ in range(6):
        top, left = rng.uniform(0, 0.6, size=2)
        bottom, right = top + rng.uniform(0.2, 1 - top), left + rng.uniform(0.2, 1 - left)
        box = (float(top), float(left), float(bottom), float(right))
        want = torch.tensor(_tokenlabeling_crop(m, box, grid)).flatten()
        _, dense = _targets(scores, box, grid)
        torch.testing.assert_close(dense[:, 0], torch.sigmoid(want), atol=1e-6, rtol=0)
        cls, _ = _targets(scores, box, grid)
        torch.testing.assert_close(cls[0], torch.sigmoid(torch.tensor(_tokenlabeling_crop(m, box, 1)[0][0])),
                                   atol=1e-6, rtol=0)


def test_flip_and_an_identity_affine_keep_the_centre_samples():
    scores = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3))
    _, dense = _targets(scores, (0.0, 0.0, 1.0, 1.0), 4, flip=True)
    assert torch.equal(dense, scores.flip(-1).flatten(1).t().softmax(-1))
    # A RandAugment op that moves nothing (translate by 0) takes the resampling path: the same grid.
    geometry = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1e-5, 0.0, 1.0, 0.0]])
    cls_moved, dense_moved = label_targets(scores[None], geometry, 4)
    torch.testing.assert_close(dense_moved[0], scores.flatten(1).t().softmax(-1))
    torch.testing.assert_close(cls_moved[0], scores.mean(dim=(1, 2)).softmax(-1))  # the mean of the moved grid


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_smoothing_is_tokenlabelings_and_rows_sum_to_one_plus_s_over_c(smoothing):
    C = 5
    scores = torch.randn(C, 4, 4, generator=torch.Generator().manual_seed(4))
    cls0, dense0 = _targets(scores, (0.1, 0.2, 0.9, 0.8), 4)
    cls, dense = _targets(scores, (0.1, 0.2, 0.9, 0.8), 4, smoothing=smoothing)
    off = smoothing / C
    on = 1.0 - smoothing + off  # TokenLabeling's on / off values, applied to the soft target
    assert torch.equal(dense, dense0 * on + off) and torch.equal(cls, cls0 * on + off)
    torch.testing.assert_close(dense.sum(-1), torch.full((16,), 1 + smoothing / C))
    torch.testing.assert_close(cls.sum(), torch.tensor(1 + smoothing / C))


def _tokenlabeling_box(grid, lam):
    """TokenLabeling's MixToken box from the global RNG: (top, left, bottom, right)."""
    cut = int(grid * np.sqrt(1.0 - lam))
    row, col = np.random.randint(grid), np.random.randint(grid)
    return (int(np.clip(row - cut // 2, 0, grid)), int(np.clip(col - cut // 2, 0, grid)),
            int(np.clip(row + cut // 2, 0, grid)), int(np.clip(col + cut // 2, 0, grid)))


def test_token_box_is_tokenlabelings_with_an_even_side():
    for seed in range(300):
        lam = (seed + 0.5) / 300
        np.random.seed(seed)
        want = _tokenlabeling_box(14, lam)
        np.random.seed(seed)
        top, left, bottom, right = token_box(14, lam)
        assert (top, left, bottom, right) == want
        side = 2 * (int(14 * np.sqrt(1 - lam)) // 2)
        if 0 < top and bottom < 14:  # not clipped: the side is even, never above 14 sqrt(1 - lam)
            assert bottom - top == side and side % 2 == 0 and side <= 14 * np.sqrt(1 - lam)


def test_mix_token_draws_lam_then_the_box_as_tokenlabeling_does():
    images, cls_t, dense_t = torch.randn(4, 3, 64, 64), torch.rand(4, 3), torch.rand(4, 16, 3)
    for seed in range(20):
        np.random.seed(seed)
        *_, box = mix_token(images, cls_t, dense_t)
        np.random.seed(seed)
        lam = np.random.beta(1.0, 1.0)
        assert box == _tokenlabeling_box(4, lam)


def test_mean_mixed_share_on_14x14_is_tokenlabelings():
    grid = 14
    # The exact mean under TokenLabeling's rule: lam ~ U(0, 1) (Beta(1, 1)), centres uniform and independent.
    lams = (np.arange(4000) + 0.5) / 4000

    def expected_share(lam):
        half = int(grid * np.sqrt(1 - lam)) // 2
        side = np.mean([min(c + half, grid) - max(c - half, 0) for c in range(grid)])
        return side * side / grid ** 2

    exact = float(np.mean([expected_share(lam) for lam in lams]))
    assert 0.26 < exact < 0.28
    np.random.seed(0)
    shares = []
    for _ in range(20000):
        top, left, bottom, right = token_box(grid, np.random.beta(1.0, 1.0))
        shares.append((bottom - top) * (right - left) / grid ** 2)
    assert abs(np.mean(shares) - exact) < 0.01  # the standard error is about 0.002
