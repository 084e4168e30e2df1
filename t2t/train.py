"""Train a T2T-ViT: `t2t-train -c t2t_vit_14 --data-dir /data/imagenet [section.key=value ...]`.

-c takes a recipe by name (t2t_vit_14, demo, ...: the YAML files shipped in t2t/configs/) or a YAML path.
Multi-GPU: `torchrun --nproc_per_node=8 -m t2t.train -c ...` (or the checkout's train.py). Every config
key can be overridden as `section.key=value`: `--help-config` lists them all with their types, defaults
and allowed values; `--print-config` shows the resolved config and exits.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # before torch's first large allocation; t2t/runtime.py

from .cli import EXIT_IO, EXIT_NONFINITE, EXIT_USAGE, ArgumentParser, UsageError, check_output_folder, run_main
from .config import Config, dump_config, load_config, recipe_names
from .engine.failures import FAILURE_FILE, clear_failure, failure_of_this_job, record_failure
from .engine.run import INTERRUPTED_EXIT_CODE, PREEMPTED_EXIT_CODE, resume_config, run
from .outputs import check_output_folder_inputs
from .runtime import keep_freed_memory

# What a run writes in its folder: no input file may sit there under one of these names.
RUN_FILES = ("config.yaml", "train.log", "summary.csv", "log.jsonl", "last.pth", "best.pth", "epoch-*.pth",
             "best-epoch-*.pth", "step-*.pth", "filelist-*.npz", FAILURE_FILE)

PROG = "t2t-train"
# Exit statuses: each error's own (t2t/errors.py: EXIT_USAGE 2, EXIT_NONFINITE 3, EXIT_IO 74, EXIT_FAILED 1 for a
# process group that could not form), where any other OSError during a run is a failed write (EX_IOERR).
TRAIN_EXIT_STATUS = {OSError: EXIT_IO}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help=f"recipe name ({', '.join(recipe_names()[:3])}, ...) or a YAML "
                        "file; optional when resuming")
    parser.add_argument("--data-dir", help="ImageNet-layout root with train/ and val/ class folders")
    parser.add_argument("--output", help="run folder (default: runs/<model>-<time>)")
    parser.add_argument("--resume", help="'auto' (newest valid checkpoint in --output) or a checkpoint path")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_help_config()
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, anywhere")
    return parser.parse_intermixed_args(argv)


def check_resume_args(args: argparse.Namespace) -> None:
    """Refuse --resume combinations that cannot work, before anything is read or written."""
    if args.resume == "auto":
        if not args.output:
            raise UsageError("--resume auto needs --output FOLDER: the run folder to continue")
        if args.config is None and not os.path.isdir(args.output):
            raise UsageError(f"--resume auto: --output {args.output!r} does not exist, so there is nothing to "
                             "resume; start a new run with -c CONFIG")
    elif args.resume is not None:
        if os.path.isdir(args.resume):
            raise UsageError(f"--resume {args.resume!r} is a folder: use --resume auto --output {args.resume}")
        if not os.path.isfile(args.resume):
            raise UsageError(f"--resume {args.resume!r}: no such checkpoint file")
    elif args.config is None:
        raise UsageError("-c/--config is required (or --resume to continue a run with its stored config)")


def resolve_config(args: argparse.Namespace) -> Config:
    """The recipe (-c) or the stored config of the run being resumed, with the command-line overrides."""
    if args.config is not None:
        return load_config(args.config, args.overrides)
    stored = resume_config(args.output if args.resume == "auto" else args.resume)
    return load_config(None, args.overrides, base=stored)


def check_run_inputs(args: argparse.Namespace, cfg: Config) -> None:
    """Paths the run will read or write, checked before it starts."""
    if not args.data_dir:
        raise UsageError("--data-dir is required: the folder holding train/ and val/")
    check_output_folder(args.output or "runs")
    if cfg.model.init_from and args.resume is None and not os.path.isfile(cfg.model.init_from):
        raise UsageError(f"model.init_from={cfg.model.init_from!r}: no such file")
    if args.output:  # the default folder is new (runs/<model>-<time>)
        data = os.path.abspath(args.data_dir)
        if os.path.isdir(data) and os.path.realpath(args.output) == os.path.realpath(data):
            raise UsageError(f"--output {args.output!r} is the --data-dir: choose a run folder outside the data")
        splits = [("--data-dir", os.path.join(data, split)) for split in ("train", "val")]
        # --resume's own file is read whole before the run writes its successor: not an input to protect here.
        files = [("model.init_from", cfg.model.init_from)] + ([("-c", args.config)] if args.resume is None else [])
        check_output_folder_inputs(args.output, data_dirs=splits, files=files, written=RUN_FILES)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()
    # A restart of a torchrun job whose previous attempt failed deterministically: fail the same way at once.
    recorded = failure_of_this_job(args.output)
    if recorded is not None:
        print(f"{PROG}: error: {recorded.message} (attempt {recorded.attempt} of this torchrun job stopped so, "
              f"as recorded in {os.path.join(args.output, FAILURE_FILE)}; not replayed)", file=sys.stderr, flush=True)
        return recorded.status
    checked_output: list[str] = []  # the run folder once checked: deterministic failures are recorded there

    def train() -> int:
        check_resume_args(args)
        cfg = resolve_config(args)
        if args.print_config:
            print(dump_config(cfg), end="")
            return 0
        check_run_inputs(args, cfg)
        if args.output:  # the default folder is new: nothing to record for a restart
            checked_output.append(args.output)
        clear_failure(args.output)  # a start by the user is a deliberate retry
        result = run(cfg, data_dir=args.data_dir, output=args.output, resume=args.resume)
        if result.preempted:
            return PREEMPTED_EXIT_CODE
        if result.interrupted:
            return INTERRUPTED_EXIT_CODE
        return 0

    def on_error(message: str, status: int) -> None:
        log(message)
        if checked_output and status in (EXIT_USAGE, EXIT_NONFINITE):  # a restart would only fail the same way
            record_failure(checked_output[0], message, status)

    def interrupted() -> str:
        return log("a second Ctrl-C stopped at once, without saving; the last checkpoint is intact")

    return run_main(PROG, train, extra=TRAIN_EXIT_STATUS, on_error=on_error, interrupted=interrupted)


def log(message: str) -> str:
    """`message`, also written to the run's train.log once logging is set up (the reason stays with the run)."""
    if logging.getLogger().handlers:
        logging.getLogger("t2t.train").error("%s", message)
    return message


if __name__ == "__main__":
    sys.exit(main())
