"""What the command-line tools share: one table from error type to exit status, the `run_main` wrapper that
applies it, one-line error messages and an argument parser that gives them."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Mapping, NoReturn, Optional, Sequence, Union

from .walk import walk_files

__all__ = ["ArgumentParser", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_IO", "EXIT_NONFINITE", "EXIT_USAGE",
           "UsageError", "check_output_folder", "exit_status", "one_line", "run_main", "split_overrides"]

EXIT_FAILED = 1  # a failure that is not the user's input (torchrun then restarts the group or gives up)
EXIT_USAGE = 2  # the inputs cannot be used as given: arguments, config, data, checkpoint or output files
EXIT_NONFINITE = 3  # train.py: the loss became NaN or infinite
EXIT_IO = 74  # EX_IOERR: a write failed (full disk, permissions); what was written before is intact
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C

# Error type -> exit status, for every tool; the most specific class of an error decides (its MRO order).
# Types are named by module so that importing this module stays cheap (no torch); an error of a type
# not listed (a bug) keeps its traceback. A tool may pass `extra` entries for its own inputs (train.py
# counts any other OSError as a failed write, the tools that parse free-form values count ValueError).
EXIT_STATUS: dict[str, int] = {
    "builtins.KeyboardInterrupt": EXIT_INTERRUPTED,
    "t2t.cli.UsageError": EXIT_USAGE,  # with OutputError and RealLabelsError
    "t2t.config.ConfigError": EXIT_USAGE,  # with DaliMissingError
    "t2t.models.weights.CheckpointError": EXIT_USAGE,
    "t2t.data.dataset.DatasetError": EXIT_USAGE,
    "t2t.data.setup.DataSizeError": EXIT_USAGE,
    "t2t.engine.distributed.DeviceError": EXIT_USAGE,
    "t2t.engine.run_folder.RunError": EXIT_USAGE,
    "t2t.engine.teacher.TeacherError": EXIT_USAGE,
    "t2t.inference.BatchSizeError": EXIT_USAGE,
    "builtins.FileNotFoundError": EXIT_USAGE,
    "builtins.OSError": EXIT_USAGE,  # an input that cannot be read, an output folder that cannot be written
    "t2t.engine.trainer.NonFiniteLossError": EXIT_NONFINITE,
    "t2t.engine.checkpoint.CheckpointSaveError": EXIT_IO,
    "t2t.outputs.WriteError": EXIT_IO,  # a full disk while writing an output
    "t2t.engine.distributed.DistributedSetupError": EXIT_FAILED,
}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def exit_status(error: BaseException, extra: Optional[Mapping[type, int]] = None) -> Optional[int]:
    """The exit status for `error` (EXIT_STATUS, `extra` first), or None for an error the table does not list."""
    for cls in type(error).__mro__:
        if extra and cls in extra:
            return extra[cls]
        if _qualname(cls) in EXIT_STATUS:
            return EXIT_STATUS[_qualname(cls)]
    return None


def run_main(prog: str, body: Callable[[], int], *, interrupted: Union[str, Callable[[], str]] = "stopped",
             extra: Optional[Mapping[type, int]] = None) -> int:
    """body()'s status; an error the table lists: `prog: error: <one line>` on stderr and its status.

    Ctrl-C prints `prog: interrupted (Ctrl-C): <interrupted>` (a string, or a function giving one).
    """
    try:
        return body()
    except KeyboardInterrupt:
        what = interrupted() if callable(interrupted) else interrupted
        print(f"\n{prog}: interrupted (Ctrl-C): {what}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:
        status = exit_status(e, extra)
        if status is None:
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return status

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UsageError(ValueError):
    """A command-line argument that cannot be used as given."""


def one_line(error: BaseException) -> str:
    """The message of `error` on one line; for errors re-raised from a data-loader worker, the original one."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip() or type(error).__name__
    if "Original Traceback" in text:  # DataLoader workers wrap the message in the worker's traceback
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line of stderr (exit status 2), like every other error of the scripts."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def check_output_folder(path: str, what: str = "--output") -> None:
    """Raise UsageError naming `path` if a folder cannot be created or written there."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == os.path.abspath(path) else f"is under {existing!r}, which is a file"
        raise UsageError(f"{what} {path!r} {where}: give a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path!r}: no permission to write in {existing!r}")


_OVERRIDE = re.compile(r"^[A-Za-z_]+\.[A-Za-z_]+=")


def split_overrides(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """(values, section.key=value overrides) of a list flag that took the overrides written after it."""
    overrides = [v for v in values if _OVERRIDE.match(v) and not os.path.exists(v)]
    return [v for v in values if v not in overrides], overrides


def list_images(inputs: Sequence[str]) -> list[str]:
    """Image files named, or found (recursively, sorted) under the folders named."""
    from .data.dataset import IMG_EXTENSIONS

    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, names in walk_files(item):  # regular files, each real folder once
                paths.extend(os.path.join(dirpath, n) for n in names if n.lower().endswith(IMG_EXTENSIONS))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f"--images {item!r}: no such file or folder")
    if not paths:
        raise UsageError(f"--images {' '.join(inputs)}: no image files ({', '.join(IMG_EXTENSIONS)})")
    return paths
