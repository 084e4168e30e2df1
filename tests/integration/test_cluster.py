"""What multi-GPU and cluster runs depend on, shown on CPU processes over gloo.

Collectives only through the helpers, on the process group's device; rank 0's choices broadcast;
no host sync per micro-batch; no leftover micro-batches; a run without --output refused where
torchrun may restart it; a missing peer fails with a message instead of a hang; a restarted group of
four reduces in the same order as before; a run stopped on
two processes continues on one.
"""
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from t2t import train
from t2t.config import load_config
from t2t.engine import collectives, distributed
from train_helpers import ROOT, free_port, load, make_data, run_train, torchrun_cmd, write_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")), train=13)  # 39 images


# ---------------------------------------------------------------------------------------------
# Collectives


def _as_rank(rank: int, world: int, port: int) -> None:
    """The environment torchrun gives rank `rank` of `world` on one machine."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _collectives_worker(rank: int, world: int, port: int, data: str, out: str, calls_file: str) -> None:
    _as_rank(rank, world, port)
    torch.set_num_threads(1)
    calls = []

    def spy(name, real):
        def wrapper(*args, **kwargs):
            frame = sys._getframe(1)
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            calls.append((name, frame.f_globals.get("__name__"), [str(t.device) for t in tensors]))
            return real(*args, **kwargs)
        return wrapper

    for name in ("all_reduce", "broadcast", "all_gather", "reduce_scatter", "broadcast_object_list",
                 "all_gather_object"):
        setattr(tdist, name, spy(name, getattr(tdist, name)))
    from t2t.engine.run import run
    cfg = load_config(os.path.join(out, "tiny.yaml"), ["train.epochs=1", "sched.cooldown_epochs=0",
                                                       "train.log_interval=1", "checkpoint.every_steps=2"])
    run(cfg, data_dir=data, output=os.path.join(out, "run"))
    with open(f"{calls_file}.{rank}", "w") as f:
        f.write(repr(calls))


@pytest.mark.slow
def test_every_collective_goes_through_the_helpers_on_the_group_device(data_dir, tmp_path):
    """No module but t2t.engine.collectives calls a torch.distributed collective, and the helpers put every
    tensor on collective_device(): with NCCL, a CPU tensor in a collective fails at the first step."""
    write_config(str(tmp_path))
    calls_file = str(tmp_path / "calls")
    mp.start_processes(_collectives_worker, args=(2, free_port(), data_dir, str(tmp_path), calls_file), nprocs=2,
                       start_method="spawn")
    for rank in range(2):
        calls = eval(open(f"{calls_file}.{rank}").read())
        assert len(calls) > 10
        callers = {caller for _, caller, _ in calls if caller != "torch.distributed.distributed_c10d"}
        assert callers == {"t2t.engine.collectives"}, callers
        assert {d for _, _, devices in calls for d in devices} == {"cpu"}  # the gloo group's device
        assert "all_gather_object" in {name for name, _, _ in calls}  # the shared check of the validation images


def _agree_worker(rank: int, world: int, port: int, results: str) -> None:
    _as_rank(rank, world, port)
    from t2t.engine.run_folder import RunError
    from t2t.engine.run_folder import agreed as _agreed
    info = distributed.init_distributed("cpu")
    try:
        chosen = _agreed(info, lambda: f"step-{rank}.pth")  # each rank would list the folder differently
        try:
            _agreed(info, lambda: (_ for _ in ()).throw(RunError("no checkpoint can be loaded")))
            error = None
        except RunError as e:
            error = str(e)
        with open(f"{results}.{rank}", "w") as f:
            f.write(repr((chosen, error)))
    finally:
        distributed.cleanup_distributed()


def _results_of_ranks(worker, world: int, tmp_path) -> list:
    """Run `worker(rank, world, port, results)` on `world` spawned processes; what each wrote, by rank."""
    results = str(tmp_path / worker.__name__)
    mp.start_processes(worker, args=(world, free_port(), results), nprocs=world, start_method="spawn")
    return [eval(open(f"{results}.{rank}").read()) for rank in range(world)]


@pytest.mark.slow
def test_rank0_chooses_and_every_rank_follows(tmp_path):
    assert _results_of_ranks(_agree_worker, 2, tmp_path) == [("step-0.pth", "no checkpoint can be loaded")] * 2


def _bucket_worker(rank: int, world: int, port: int, results: str) -> None:
    _as_rank(rank, world, port)
    from contextlib import nullcontext

    from torch.nn.parallel import DistributedDataParallel
    distributed.init_distributed("cpu")

    def train(restart_at, settle):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.BatchNorm1d(256), torch.nn.GELU(),
                                    torch.nn.Dropout(0.1), torch.nn.Linear(256, 256), torch.nn.GELU(),
                                    torch.nn.Linear(256, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ddp, untouched = None, True
        for step in range(6):
            if step in (0, restart_at):  # a new group's DDP, as after a restart
                ddp = DistributedDataParallel(model, gradient_as_bucket_view=True, bucket_cap_mb=0.1)
                if settle:
                    before = [t.clone() for t in model.state_dict().values()], torch.get_rng_state()
                    collectives.settle_bucket_layout(ddp, torch.zeros(8, 64), nullcontext())
                    untouched &= all(torch.equal(a, b) for a, b in zip(before[0], model.state_dict().values()))
                    untouched &= torch.equal(before[1], torch.get_rng_state())
                    untouched &= all(p.grad is None for p in model.parameters())
            g = torch.Generator().manual_seed(100 * step + rank)
            x, y = torch.randn(8, 64, generator=g), torch.randint(0, 10, (8,), generator=g)
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return [p.detach().clone() for p in model.parameters()], untouched

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    try:
        plain, restarted = train(None, False)[0], train(3, False)[0]
        (settled, untouched), (settled_restart, _) = train(None, True), train(3, True)
        with open(f"{results}.{rank}", "w") as f:
            f.write(repr(dict(plain=same(plain, restarted), settled=same(settled, settled_restart),
                              untouched=untouched)))
    finally:
        distributed.cleanup_distributed()


@pytest.mark.slow
def test_a_restarted_group_of_four_reduces_in_the_same_order(tmp_path):
    """With four ranks a new DDP reduces its first step in another order unless its buckets are settled."""
    found = _results_of_ranks(_bucket_worker, 4, tmp_path)
    assert all(r == found[0] for r in found), found
    # Without settling, the step after the restart differs (so this test can tell the two apart) ...
    assert not found[0]["plain"], "DDP no longer changes its reduction order on a restart"
    # ... and with it the restarted run is bit-identical; settling changes no weight, buffer, RNG or grad.
    assert found[0]["settled"] and found[0]["untouched"], found[0]


@pytest.mark.slow
def test_a_missing_peer_fails_with_a_message_not_a_hang(data_dir, tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "-c", write_config(str(tmp_path)), "--data-dir", data_dir,
         "--output", str(tmp_path / "run"), "dist.init_timeout_minutes=0.1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - start < 120
    assert "rank 0 of 2 waited" in proc.stderr and "dist.init_timeout_minutes=0.1" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# The training loop


# ---------------------------------------------------------------------------------------------
# Launches


def test_run_without_output_is_refused_when_torchrun_may_restart(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.chdir(tmp_path)
    code = train.main(["-c", write_config(str(tmp_path)), "--data-dir", data_dir])
    assert code == 2
    assert "--output" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_processes_stopped_mid_epoch_continue_on_one(data_dir, tmp_path):
    """train.global_batch_size keeps 8 images per step: 2 x 4 on two processes, 1 x 4 x 2 accumulated on one.
    The continued run takes the same steps at the same lr from the same position in the data (which samples
    make up each step is shown by test_train_sampler_global_batches_do_not_depend_on_the_world_size; the
    weights cannot be compared with the two-process run's: the Performer's dropout masks are drawn per rank)."""
    config = write_config(str(tmp_path))
    common = ["--data-dir", data_dir, "train.global_batch_size=8", "data.workers=0"]
    launcher = torchrun_cmd("--standalone", "--nproc_per_node=2")
    straight = subprocess.run([*launcher, "-c", config, "--output", str(tmp_path / "straight"), *common],
                              capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    out = tmp_path / "resized"
    first = subprocess.run([*launcher, "-c", config, "--output", str(out), *common, "train.max_steps=6"],
                           capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert first.returncode == 0, first.stdout + first.stderr
    stopped = load(str(out / "step-00000006.pth"))
    position = stopped["train_state"]
    assert position["epoch"] == 1 and position["step_in_epoch"] == 2  # 39 // 8 = 4 steps per epoch
    # Progress in samples of the global order, what a launch with another world size continues from.
    assert position["step_in_epoch"] * stopped["run"]["global_batch_size"] == 16
    assert stopped["run"]["world_size"] == 2

    # Without the setting the global batch would halve: refused, naming what to set.
    refused = run_train("-c", config, "--output", str(out), "--resume", "auto",
                        *[a for a in common if not a.startswith("train.global_batch_size")], check=False)
    assert refused.returncode == 2 and "train.global_batch_size=8" in refused.stderr, refused.stderr

    run_train("-c", config, "--output", str(out), "--resume", "auto", *common)
    a, b = load(str(tmp_path / "straight" / "last.pth")), load(str(out / "last.pth"))
    assert a["train_state"]["global_step"] == b["train_state"]["global_step"] == 12 and b["run"]["world_size"] == 1
    assert b["run"]["grad_accum_steps"] == 2
    assert b["run"]["global_batch_size"] == a["run"]["global_batch_size"] == 8  # samples seen: 12 x 8 in both
    assert [row["lr"] for row in a["train_state"]["history"]] == [row["lr"] for row in b["train_state"]["history"]]
    assert [row["epoch"] for row in b["train_state"]["history"]] == [0, 1, 2]
    assert "1 processes x 4 per process x 2 accumulation" in (out / "train.log").read_text()


# ---------------------------------------------------------------------------------------------
# Run folders and checkpoints
