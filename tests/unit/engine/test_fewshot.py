"""The few-shot ridge probe: closed form against a least-squares solve, shot draws, feature extraction."""
import pytest
import timm
import torch

from t2t.engine.fewshot import extract_features, fewshot_accuracy, ridge_weights, shot_split


@pytest.mark.parametrize("n,d", [(40, 9), (6, 30)], ids=["more-examples", "more-features"])
def test_ridge_solution_equals_least_squares_on_the_augmented_system(n, d):
    generator = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    y = 2.0 * torch.nn.functional.one_hot(torch.randint(0, 4, (n,), generator=generator), 4).double() - 1
    l2 = 0.7
    # min ||x w - y||^2 + l2 ||w||^2  ==  min ||[x; sqrt(l2) I] w - [y; 0]||^2
    augmented_x = torch.cat([x, l2 ** 0.5 * torch.eye(d, dtype=torch.float64)])
    augmented_y = torch.cat([y, torch.zeros(d, 4, dtype=torch.float64)])
    expected = torch.linalg.lstsq(augmented_x, augmented_y).solution
    torch.testing.assert_close(ridge_weights(x, y, l2), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ridge_weights(x.float(), y.float(), l2), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="l2=0"):
        ridge_weights(x, y, 0)


def test_shots_are_drawn_by_the_seed_and_nested():
    labels = [c for c in range(5) for _ in range(8)]
    split = shot_split(labels, 5, [1, 3], seed=0)
    assert split == shot_split(labels, 5, [1, 3], seed=0)
    assert split.shots != shot_split(labels, 5, [1, 3], seed=1).shots
    assert set(split.shots[1]) <= set(split.shots[3]) and not set(split.shots[3]) & set(split.test)
    assert sorted(labels[i] for i in split.shots[3]) == [c for c in range(5) for _ in range(3)]
    assert len(split.test) == 5 * 5
    assert shot_split(labels, 5, [8], seed=0, test_labels_from_rest=False).test == []
    with pytest.raises(ValueError, match="class 0 has 8 images; 8 shots and a test image need 9"):
        shot_split(labels, 5, [8], seed=0)


def test_separable_features_are_classified():
    generator = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(3, 16, generator=generator)
    labels = torch.arange(3).repeat_interleave(10)
    features = centres[labels] + 0.1 * torch.randn(30, 16, generator=generator)
    train, test = torch.arange(30) % 5 < 2, torch.arange(30) % 5 >= 2
    assert fewshot_accuracy(features[train], labels[train], features[test], labels[test], 3, l2=1.0) == 100.0
    shuffled = labels[test][torch.randperm(int(test.sum()), generator=generator)]
    assert fewshot_accuracy(features[train], labels[train], features[test], shuffled, 3, l2=1.0) < 100.0


def test_features_are_the_models_pre_logits_in_dataset_order():
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=5).eval()
    images = torch.randn(7, 3, 32, 32)
    order = [3, 0, 6, 1, 5, 2, 4]  # the loader's order of dataset positions
    loader = [(images[order[:4]], torch.zeros(4)), (images[order[4:]], torch.zeros(3))]
    table = extract_features(model, loader, order, 7, device=torch.device("cpu"))
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
    torch.testing.assert_close(table, expected)
    with pytest.raises(RuntimeError, match="1 images were never read"):
        extract_features(model, loader[:1] + [(images[order[4:6]], torch.zeros(2))], order, 7,
                         device=torch.device("cpu"))
