"""Fine-tuning through train.py: frozen parts stay out of DDP, the transfer ratio reaches the optimizer."""
import os

import pytest
import timm
import torch

from t2t.config import OptimConfig
from t2t.engine.optim import build_optimizer, freeze_parameters
from train_helpers import load, make_data, run_train, write_config


def _model():
    return timm.create_model("t2t_vit_7", img_size=32, num_classes=3)


def _ddp_step(rank, world, init_file, frozen_out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = _model()
    freeze_parameters(model, ["tokens_to_token", "blocks.0-5"])
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = build_optimizer(model, OptimConfig(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(rank)
    ddp(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    if rank == 0:
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        torch.save(sorted(changed), frozen_out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_frozen_parameters_stay_out_of_ddp(tmp_path):
    """Two gloo processes: DDP syncs only trainable parameters and the frozen ones do not move."""
    out = str(tmp_path / "changed.pt")
    torch.multiprocessing.spawn(_ddp_step, args=(2, str(tmp_path / "init"), out), nprocs=2)
    changed = torch.load(out)
    assert changed and all(n.startswith(("blocks.6", "norm", "head", "cls_token")) for n in changed)


@pytest.mark.slow
def test_train_py_with_freeze_and_transfer_ratio(tmp_path):
    data = make_data(str(tmp_path / "data"))
    config = write_config(str(tmp_path))
    run_train("-c", config, "--data-dir", data, "--output", str(tmp_path / "base"), "train.epochs=1",
              "sched.cooldown_epochs=0")
    out = tmp_path / "ft"
    run_train("-c", config, "--data-dir", data, "--output", str(out), "train.epochs=1", "sched.cooldown_epochs=0",
              f"model.init_from={tmp_path / 'base' / 'last.pth'}", "model.freeze=[tokens_to_token,blocks.0-3]",
              "optim.name=sgd", "optim.lr=0.05", "optim.backbone_lr_scale=0.01")
    base, ft = load(str(tmp_path / "base" / "last.pth")), load(str(out / "last.pth"))
    assert torch.equal(ft["model"]["blocks.3.attn.qkv.weight"], base["state_dict_ema"]["blocks.3.attn.qkv.weight"])
    assert not torch.equal(ft["model"]["blocks.4.attn.qkv.weight"], base["state_dict_ema"]["blocks.4.attn.qkv.weight"])
    groups = ft["optimizer"]["param_groups"]
    assert [g["name"] for g in groups[:2]] == ["lr x1", "lr x1 no-decay"]  # the head's
    assert sorted(g["name"] for g in groups[2:]) == ["lr x0.01", "lr x0.01 no-decay"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.01, 0.01]
    with open(os.path.join(out, "train.log")) as f:
        log = f.read()
    assert "Frozen (model.freeze ['tokens_to_token', 'blocks.0-3'])" in log and "Optimizer sgd" in log


