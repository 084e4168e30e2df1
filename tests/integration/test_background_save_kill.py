"""A kill during a background checkpoint write leaves the previous checkpoint whole."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from t2t.engine.checkpoint import find_resume_checkpoint
from train_helpers import ROOT


@pytest.mark.slow
def test_a_kill_during_the_background_write_leaves_the_previous_checkpoint(tmp_path):
    """SIGKILL while the writer thread is inside torch.save: the previous checkpoint is the one resumed."""
    script = textwrap.dedent(f"""
        import sys, time, torch
        sys.path.insert(0, {ROOT!r})
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        from train_helpers import fake_checkpoint
        from t2t.engine import checkpoint
        from t2t.engine.background_save import BackgroundCheckpointWriter
        writer = BackgroundCheckpointWriter(checkpoint.CheckpointWriter({str(tmp_path)!r}))
        def state(step):
            ckpt = fake_checkpoint(step, 0)
            ckpt["model"] = {{"w": torch.full((1000,), float(step))}}
            return ckpt
        writer.save(state(1), epoch=0, step=1, end_of_epoch=False, is_best=False)
        writer.wait()
        real_save = torch.save
        def slow_save(obj, f, *a, **k):
            f.write(b"partial bytes of step 2")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        checkpoint.torch.save = slow_save
        writer.save(state(2), epoch=0, step=2, end_of_epoch=False, is_best=False)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert leftovers  # the unfinished file is there, under a temporary name
    path, ckpt = find_resume_checkpoint(str(tmp_path))
    assert os.path.basename(path) == "step-00000001.pth" and ckpt.global_step == 1
    assert torch.equal(ckpt.weights["w"], torch.full((1000,), 1.0))
