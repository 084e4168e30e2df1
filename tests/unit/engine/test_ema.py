"""The cached-list EMA: the same weights and state dict as timm's ModelEmaV3, fewer host operations."""
import timm
import torch
from timm.utils import ModelEmaV3

import t2t  # noqa: F401  (registers the models)
from t2t.engine.ema import CachedModelEma


def _train_steps(model, emas, steps=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        torch.manual_seed(step)
        model(torch.randn(2, 3, 32, 32)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        for ema in emas:
            ema.update(model, step=step + 1)


def test_cached_ema_matches_timms_and_keeps_its_state_dict():
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3, depth=2)
    ours, theirs = CachedModelEma(model, decay=0.9), ModelEmaV3(model, decay=0.9)
    _train_steps(model, [ours, theirs])
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], v) for k, v in {f"module.{n}": t for n, t in model.state_dict().items()}.items())


def test_cached_ema_follows_a_reload_and_a_new_model_object():
    torch.manual_seed(0)
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3, depth=1)
    ours, theirs = CachedModelEma(model, decay=0.5), ModelEmaV3(model, decay=0.5)
    _train_steps(model, [ours, theirs], steps=2)
    fresh = timm.create_model("t2t_vit_7", img_size=32, num_classes=3, depth=1)
    for ema in (ours, theirs):
        ema.module.load_state_dict(fresh.state_dict())  # a resume loads the EMA in place
    other = timm.create_model("t2t_vit_7", img_size=32, num_classes=3, depth=1)
    other.load_state_dict(model.state_dict())
    _train_steps(other, [ours, theirs], steps=2)  # another model object: the lists are collected again
    assert all(torch.equal(x, y) for x, y in zip(ours.state_dict().values(), theirs.state_dict().values()))


def test_cached_ema_update_is_one_fused_lerp():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3, depth=2)
    ema = CachedModelEma(model, decay=0.9)
    ema.update(model, step=1)  # collects the lists
    with Calls() as calls:
        ema.update(model, step=2)
    assert calls.names == ["aten._foreach_lerp_"]
    with Calls() as calls:
        ModelEmaV3(model, decay=0.9).update(model, step=2)
    assert calls.names.count("aten.detach") > 100  # timm's walks both state dicts at every update


def _ema_steps(ema, model, steps):
    """Move the model's weights at each optimizer step and update the EMA; the EMA weight after each step."""
    seen = []
    for step in range(steps):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        ema.update(model, step=step)
        seen.append(ema.module.weight.detach().clone())
    return seen


def test_warmup_decay_and_interval_follow_timms_formula_step_by_step():
    from t2t.config import load_config
    from t2t.engine.ema import build_ema

    cfg = load_config(overrides=["ema.decay=0.999", "ema.warmup=true", "ema.warmup_gamma=2.0",
                                 "ema.warmup_power=0.75", "ema.interval=3"]).ema
    timms = ModelEmaV3(torch.nn.Linear(4, 2), decay=0.999, use_warmup=True, warmup_gamma=2.0, warmup_power=0.75)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    ema = build_ema(model, cfg)
    # timm's decay table: 0 for the first update, then the warm-up up to ema.decay
    table = [timms.get_decay(step) for step in range(40)]
    assert table[0] == 0.0 and 0.0 < table[5] < table[20] < 0.999
    assert [ema.get_decay(step) for step in range(40)] == table
    expected = ema.module.weight.detach().clone()
    weights = _ema_steps(ema, model, 12)
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 2)
    for step, weight in enumerate(weights):
        with torch.no_grad():
            reference.weight.add_(torch.randn_like(reference.weight))
        if (step + 1) % 3 == 0:  # updated after steps 2, 5, 8, 11 only, with the decay of that step
            expected = expected.lerp(reference.weight.detach(), 1.0 - table[step])
        assert torch.equal(weight, expected), step


def test_ema_interval_is_a_function_of_the_step_so_a_resume_continues_it():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    straight = CachedModelEma(model, decay=0.9, use_warmup=True, interval=2)
    straight_weights = _ema_steps(straight, model, 7)
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 2)  # the same weights and the same draws after them
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    first = CachedModelEma(model, decay=0.9, use_warmup=True, interval=2)
    _ema_steps(first, model, 3)
    resumed = CachedModelEma(model, decay=0.9, use_warmup=True, interval=2)  # a new process, loaded from a save
    resumed.module.load_state_dict(first.module.state_dict())
    for step in range(3, 7):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        resumed.update(model, step=step)
    assert torch.equal(resumed.module.weight, straight_weights[-1])
