#!/usr/bin/env python
"""Kill one torchrun worker with SIGKILL at a random step, many times, and check every restart.

Not collected by pytest (a long soak; `make test` runs one such restart). Each trial trains the tiny
test model under torchrun with --max-restarts=2, kills one randomly chosen worker once a random
mid-run checkpoint exists, and requires the restarted group to resume and end bit-identical to an
uninterrupted run with the same number of workers:

    python tests/soak_restarts.py --nproc 2 --trials 10
    python tests/soak_restarts.py --nproc 4 --trials 10
    python tests/soak_restarts.py --nproc 2 --trials 10 --c10d     # --rdzv_backend=c10d --nnodes=1:2
"""
import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

_TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_TESTS, os.path.join(_TESTS, "integration")]  # train_helpers; test_distributed_train

from test_distributed_train import kill_one_worker_and_compare  # noqa: E402
from train_helpers import free_port, make_data  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--c10d", action="store_true", help="c10d rendezvous with --nnodes=1:2 instead of --standalone")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(str(root / "data"), train=13 * args.nproc // 2 + 1)
        rdzv = ("--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{free_port()}", "--nnodes=1:2",
                f"--rdzv_id=soak-{os.getpid()}") if args.c10d else ("--standalone",)
        straight = None
        passed = 0
        for trial in range(args.trials):
            # Mid-epoch step files (5 steps per epoch; end-of-epoch steps are saved as last.pth).
            step = rng.choice([2, 4, 6, 8, 12, 14])
            start = time.monotonic()
            try:
                folder = root / f"trial-{trial}"
                folder.mkdir()
                straight = kill_one_worker_and_compare(data, folder, nproc=args.nproc, after_step=step,
                                                       seed=rng.randrange(1 << 30), rdzv=rdzv, straight=straight)
                passed += 1
                print(f"trial {trial}: killed after step {step}: resumed, bit-identical "
                      f"({time.monotonic() - start:.0f} s)", flush=True)
            except AssertionError as e:
                print(f"trial {trial}: killed after step {step}: FAILED: {str(e)[-2000:]}", flush=True)
        print(f"{passed} passed, {args.trials - passed} failed")
        return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
