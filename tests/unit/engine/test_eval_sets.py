"""Named evaluation sets: matching class folders to model outputs, and 200-class scoring of 1000-class logits."""
import pytest
import torch
import torch.nn as nn

from t2t.engine.eval_sets import (EvalSetError, SubsetLogits, builtin_real_labels, output_indices, parse_eval_sets,
                                  timm_subset)
from t2t.engine.eval_suite import load_real_labels
from t2t.engine.evaluate import evaluate_models


def test_timm_ships_the_subset_lists_and_real_labels():
    for name in ("imagenet-a", "imagenet-r"):
        synsets, indices = timm_subset(name)
        assert len(synsets) == len(indices) == 200 and synsets == sorted(synsets)
        assert indices == sorted(indices) and len(set(indices)) == 200 and 0 <= min(indices) and max(indices) < 1000
    assert timm_subset("imagenet-a")[0] != timm_subset("imagenet-r")[0]
    real = builtin_real_labels()
    assert len(real) == 50000 and all(isinstance(e, list) for e in real[:100])
    paths = [f"/v/n{i % 7}/ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(50000)]
    labels = load_real_labels("builtin", paths)
    assert [c for c in labels[1].tolist() if c >= 0] == real[1]


def test_parse_eval_sets():
    sets = parse_eval_sets(["v2=/d/v2", "imagenet-a=/d/a=b"])
    assert [(s.name, s.root) for s in sets] == [("v2", "/d/v2"), ("imagenet-a", "/d/a=b")]
    for bad in (["v2"], ["=/d"], ["v2="], ["a b=/d"]):
        with pytest.raises(EvalSetError, match="expected NAME=DIR"):
            parse_eval_sets(bad)
    with pytest.raises(EvalSetError, match="used twice"):
        parse_eval_sets(["a=/x", "a=/y"])


def test_folders_are_matched_to_outputs():
    imagenet = [f"n{i:08d}" for i in range(1000)]
    assert output_indices("sketch", "/d", imagenet, 1000, imagenet) is None
    assert output_indices("sketch", "/d", imagenet, 1000, None) is None  # a file without names: trusted in order
    # ImageNet-V2: folders named by index, listed in string order (0, 1, 10, 100, ...): each maps to its value.
    v2 = sorted(str(i) for i in range(1000))
    assert output_indices("v2", "/d", v2, 1000, imagenet) == [int(f) for f in v2]
    assert output_indices("v2", "/d", [str(i) for i in range(1000)], 1000, None) is None
    # A subset by name, in the set's own order.
    assert output_indices("sub", "/d", [imagenet[7], imagenet[3]], 1000, imagenet) == [7, 3]
    # ImageNet-A / -R: by name, or recognised by their folder names; timm's indices.
    synsets, indices = timm_subset("imagenet-a")
    assert output_indices("imagenet-a", "/d", synsets, 1000, None) == indices
    assert output_indices("ImageNet_A", "/d", synsets, 1000, None) == indices
    assert output_indices("adversarial", "/d", synsets, 1000, None) == indices
    r_synsets, r_indices = timm_subset("imagenet-r")
    assert output_indices("imagenet-r", "/d", r_synsets, 1000, None) == r_indices
    # ... and checked against the class names a checkpoint records.
    names = [f"x{i}" for i in range(1000)]
    for i, s in zip(indices, synsets):
        names[i] = s
    assert output_indices("imagenet-a", "/d", synsets, 1000, names) == indices
    names[indices[5]] = "n99999999"
    with pytest.raises(EvalSetError, match="not ImageNet-1k's"):
        output_indices("imagenet-a", "/d", synsets, 1000, names)
    with pytest.raises(EvalSetError, match="imagenet-a has the 200 WordNet ids"):
        output_indices("imagenet-a", "/d", r_synsets, 1000, None)
    with pytest.raises(EvalSetError, match="model has 10 classes"):
        output_indices("imagenet-a", "/d", synsets, 10, None)
    with pytest.raises(EvalSetError, match="cannot be matched"):
        output_indices("other", "/d", ["cat", "dog"], 1000, None)
    with pytest.raises(EvalSetError, match="cannot be matched"):
        output_indices("other", "/d", ["5", "1000"], 1000, None)


def test_200_class_set_equals_a_hand_count():
    """Known 1000-class logits through the evaluation loop, scored on ImageNet-A's 200 classes."""
    _, indices = timm_subset("imagenet-a")
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1000, generator=generator)
    targets = torch.randint(0, 200, (37,), generator=generator)
    # Rows whose best class overall lies outside the set; for half of them the set's best is the target.
    outside = [c for c in range(1000) if c not in set(indices)]
    for row in range(0, 37, 3):
        logits[row, outside[row]] = 50.0
        if row % 2:
            logits[row, indices[targets[row]]] = 40.0
    sub = logits[:, indices]
    hand_top1 = 100.0 * sum(int(sub[i].argmax()) == int(targets[i]) for i in range(37)) / 37
    hand_top5 = 100.0 * sum(int(targets[i]) in sub[i].topk(5).indices.tolist() for i in range(37)) / 37
    hand_loss = sum(float(-torch.log_softmax(sub[i], 0)[targets[i]]) for i in range(37)) / 37
    assert logits.argmax(1).eq(torch.tensor(indices)[targets]).sum() < sub.argmax(1).eq(targets).sum()
    batches = [(logits[i:i + 8], targets[i:i + 8]) for i in range(0, 37, 8)]
    result = evaluate_models({"a": SubsetLogits(nn.Identity(), indices)}, batches, device=torch.device("cpu"))["a"]
    assert result["count"] == 37
    assert result["top1"] == pytest.approx(hand_top1, abs=1e-9)
    assert result["top5"] == pytest.approx(hand_top5, abs=1e-9)
    assert result["loss"] == pytest.approx(hand_loss, rel=1e-5)
    assert 0 < hand_top1 < 100  # hits and misses: the count is not vacuous
