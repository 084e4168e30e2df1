"""optim.name takes any optimizer timm knows, over the project's parameter groups, and resumes exactly."""
import copy

import pytest
import timm
import torch
from timm.optim import Lamb, Lars, Lion

from t2t.config import ConfigError, OptimConfig, load_config
from t2t.engine.optim import build_optimizer, param_groups, set_lr


def _model():
    torch.manual_seed(0)
    return timm.create_model("t2t_vit_7", img_size=32, num_classes=3)


def _step(model, optimizer, seed):
    torch.manual_seed(seed)
    images, targets = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2,))
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    optimizer.step()


@pytest.mark.parametrize("name, cls, kwargs", [
    ("lamb", Lamb, {}),
    ("lion", Lion, {"betas": (0.95, 0.98)}),
    ("lars", Lars, {"trust_coeff": 0.002}),
])
def test_a_step_equals_timms_optimizer_built_by_hand(name, cls, kwargs):
    """Same groups (no-decay, backbone scale, head first), same lr and kwargs: the same weights after a step."""
    cfg = OptimConfig(name=name, weight_decay=0.05, backbone_lr_scale=0.5, kwargs=dict(kwargs))
    ours, theirs = _model(), _model()
    optimizer = build_optimizer(ours, cfg, lr=1e-3)
    assert type(optimizer) is cls
    groups = param_groups(theirs, weight_decay=0.05, backbone_lr_scale=0.5)
    for g in groups:
        g["lr"] = 1e-3 * g["lr_scale"]
    extra = {"momentum": 0.9} if name == "lars" else {}
    by_hand = cls(groups, lr=1e-3, weight_decay=0.05, **extra, **kwargs)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups] == \
        [(g["lr"], g["weight_decay"], len(g["params"])) for g in by_hand.param_groups]
    _step(ours, optimizer, 1)
    _step(theirs, by_hand, 1)
    for (n, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.equal(a, b), n
    assert any(not torch.equal(a, b) for a, b in zip(ours.state_dict().values(), _model().state_dict().values()))


@pytest.mark.parametrize("name", ["lamb", "lion", "adan"])
def test_resume_from_the_optimizer_state_is_exact(name):
    cfg = OptimConfig(name=name)
    straight = _model()
    opt = build_optimizer(straight, cfg, lr=1e-3)
    for i in range(4):
        set_lr(opt, 1e-3 * (i + 1))
        _step(straight, opt, i)

    first = _model()
    opt = build_optimizer(first, cfg, lr=1e-3)
    for i in range(2):
        set_lr(opt, 1e-3 * (i + 1))
        _step(first, opt, i)
    saved = copy.deepcopy((first.state_dict(), opt.state_dict()))
    resumed = _model()
    resumed.load_state_dict(saved[0])
    opt = build_optimizer(resumed, cfg, lr=1e-3)
    opt.load_state_dict(saved[1])
    for i in range(2, 4):
        set_lr(opt, 1e-3 * (i + 1))
        _step(resumed, opt, i)
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


def test_unknown_names_and_arguments_are_one_line():
    with pytest.raises(ConfigError, match=r"optim.name='lamm': expected adamw, sgd or an optimizer timm knows"):
        load_config(None, ["optim.name=lamm"])
    with pytest.raises(ConfigError, match=r"optim.kwargs=3 \(from command line 'optim.kwargs=3'\): expected a mapping"):
        load_config(None, ["optim.kwargs=3"])
    cfg = load_config(None, ["optim.name=lamb", "optim.kwargs={trust_clip: true}"])
    assert cfg.optim.kwargs == {"trust_clip": True}
    assert type(build_optimizer(_model(), cfg.optim, lr=1e-3)) is Lamb
    with pytest.raises(ConfigError, match=r"optim.kwargs=\{'nonsense': 1\} \(optim.name='lamb'\): .*nonsense"):
        build_optimizer(_model(), OptimConfig(name="lamb", kwargs={"nonsense": 1}), lr=1e-3)
