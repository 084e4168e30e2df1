"""train.py under torchrun on the CPU (gloo): one machine, two 'nodes' on localhost, restarts."""
import os
import random
import re
import signal
import subprocess
import time

import pytest
import timm

import t2t
from train_helpers import ROOT, assert_same_run, free_port, load, make_data, run_train, torchrun_cmd, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data(str(tmp_path_factory.mktemp("data")), train=13)  # 39 images: shards of unequal size


def _check_run(out: str, world_size: int) -> dict:
    ckpt = load(os.path.join(out, "last.pth"))
    assert ckpt["run"]["world_size"] == world_size
    assert ckpt["run"]["global_batch_size"] == 4 * world_size
    model = timm.create_model("t2t_vit_7", img_size=32, num_classes=3)
    assert t2t.load_pretrained_weights(model, os.path.join(out, "best.pth")) == "state_dict_ema"
    assert not any(k.startswith("module.") for k in ckpt["model"])
    with open(os.path.join(out, "train.log")) as f:
        assert "world size %d" % world_size in f.read()
    return ckpt


def test_two_processes_throughtorchrun_cmd(data_dir, tmp_path):
    out = str(tmp_path / "ddp")
    cmd = torchrun_cmd("--standalone", "--nproc_per_node=2") + [
        "-c", write_config(str(tmp_path)), "--data-dir", data_dir, "--output", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ckpt = _check_run(out, 2)
    assert ckpt["train_state"]["global_step"] == 3 * 4  # 39 images // 2 ranks = 19 per rank // batch 4 = 4 steps, 3 epochs
    row = ckpt["train_state"]["history"][-1]
    assert 0 <= row["val_top1"] <= 100 and row["val_top5"] == 100.0  # 3 classes: top-5 is certain


def test_two_nodes_rendezvous_on_localhost(data_dir, tmp_path):
    out = str(tmp_path / "nodes")
    port = free_port()
    common = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
              "--rdzv_id=t2t-test"]
    args = ["-c", write_config(str(tmp_path)), "--data-dir", data_dir, "--output", out, "train.epochs=1",
            "sched.cooldown_epochs=0"]
    nodes = [subprocess.Popen(torchrun_cmd(*common) + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(outputs)
    _check_run(out, 2)


def test_torchrun_restart_resumes_by_itself(data_dir, tmp_path):
    config = write_config(str(tmp_path))
    common = ["--data-dir", data_dir, "checkpoint.every_steps=3"]
    run_train("-c", config, "--output", str(tmp_path / "straight"), *common)
    out = tmp_path / "restarted"
    agent = subprocess.Popen(
        torchrun_cmd("--standalone", "--nproc_per_node=1", "--max-restarts=1") + [
            "-c", config, "--output", str(out), *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (out / "step-00000012.pth").exists():
            assert agent.poll() is None and time.time() < deadline, "run ended before the kill"
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
        assert workers, "no worker process found"
        for pid in workers:
            os.kill(int(pid), signal.SIGKILL)
        _, err = agent.communicate(timeout=900)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, err
    assert "Resuming from" in (out / "train.log").read_text()
    assert_same_run(str(tmp_path / "straight" / "last.pth"), str(out / "last.pth"))


def kill_one_worker_and_compare(data_dir: str, tmp_path, *, nproc: int, after_step: int, seed: int,
                                rdzv: tuple[str, ...] = ("--standalone",), straight: str | None = None) -> str:
    """Train under torchrun with restarts, SIGKILL one worker (chosen by `seed`) once step `after_step` is
    saved, and check that the restarted group resumed and ended bit-identical to an uninterrupted run."""
    config = write_config(str(tmp_path))
    common = ["--data-dir", data_dir, "checkpoint.every_steps=2"]
    if straight is None:
        straight = str(tmp_path / "straight")
        proc = subprocess.run(torchrun_cmd(*rdzv, f"--nproc_per_node={nproc}") + ["-c", config, "--output", straight,
                                                                                *common],
                              capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / f"killed-{seed}"
    agent = subprocess.Popen(
        torchrun_cmd(*rdzv, f"--nproc_per_node={nproc}", "--max-restarts=2") + ["-c", config, "--output", str(out),
                                                                              *common],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (out / f"step-{after_step:08d}.pth").exists():
            assert agent.poll() is None and time.time() < deadline, "run ended before the kill"
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == nproc, workers
        os.kill(int(random.Random(seed).choice(sorted(workers))), signal.SIGKILL)
        _, err = agent.communicate(timeout=900)
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, err[-5000:]
    log = (out / "train.log").read_text()
    resumed = re.search(r"Resuming from \S+ \(epoch \d+, step (\d+)\)", log)
    assert resumed, log[-3000:]
    # At least the checkpoint that was on disk before the kill: the newest one, not an older epoch file.
    assert int(resumed.group(1)) >= after_step, resumed.group(0)
    assert_same_run(os.path.join(straight, "last.pth"), str(out / "last.pth"))
    return straight


def test_killing_one_of_two_workers_restarts_and_resumes_exactly(data_dir, tmp_path):
    """The surviving worker's group is torn down and the new group forms on a fresh store namespace:
    no stale peer address (gloo 'Connection refused') and no wait for peers that are gone."""
    kill_one_worker_and_compare(data_dir, tmp_path, nproc=2, after_step=6, seed=1)
