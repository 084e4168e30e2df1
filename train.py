#!/usr/bin/env python
"""Train a T2T-ViT: `python train.py -c configs/t2t_vit_14.yaml --data-dir /data/imagenet [key=value ...]`.

Multi-GPU: `torchrun --nproc_per_node=8 train.py -c ...`. Every config key can be overridden as
`section.key=value`; `--print-config` shows the resolved config and exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch loads; see t2t/runtime.py

from t2t.config import ConfigError, dump_config, load_config
from t2t.data.dataset import DatasetError
from t2t.data.setup import DataSizeError
from t2t.engine.distributed import DistributedSetupError
from t2t.engine.run import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, RunError, resume_config, run
from t2t.engine.train_loop import NonFiniteLossError
from t2t.models.weights import CheckpointError
from t2t.runtime import keep_freed_memory

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NONFINITE = 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="YAML recipe (configs/*.yaml); optional when resuming")
    parser.add_argument("--data-dir", help="ImageNet-layout root with train/ and val/ class folders")
    parser.add_argument("--output", help="run folder (default: runs/<model>-<time>)")
    parser.add_argument("--resume", help="'auto' (newest valid checkpoint in --output) or a checkpoint path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    try:
        if args.config is not None:
            cfg = load_config(args.config, args.overrides)
        elif args.resume is not None:
            stored = resume_config(args.output if args.resume == "auto" and args.output else args.resume)
            cfg = load_config(None, args.overrides, base=stored)
        else:
            raise ConfigError("-c/--config is required (or --resume to continue a run with its stored config)")
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        if not args.data_dir:
            raise ConfigError("--data-dir is required: the folder holding train/ and val/")
        result = run(cfg, data_dir=args.data_dir, output=args.output, resume=args.resume)
    except DistributedSetupError as e:  # non-zero, so torchrun restarts the group or gives up
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C twice): stopped without saving; the last checkpoint is intact",
              file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except (ConfigError, RunError, DatasetError, DataSizeError, CheckpointError) as e:
        logging.getLogger("t2t.train").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    if result.preempted:
        return PREEMPTED_EXIT_CODE
    if result.interrupted:
        return INTERRUPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
