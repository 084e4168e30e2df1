"""What the command-line tools share: the `run_main` wrapper that turns an error into one line and its exit
status (t2t/errors.py), an argument parser that reports the same way, and checks of common arguments."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Callable, Mapping, NoReturn, Optional, Sequence, Union

from .config_help import HelpConfigAction
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_IO, EXIT_NONFINITE, EXIT_USAGE, UsageError

__all__ = ["ArgumentParser", "HELP_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_IO", "EXIT_NONFINITE", "EXIT_USAGE",
           "UsageError", "check_output_folder", "exit_status", "one_line", "run_main", "split_overrides"]


# Errors of the standard library a tool may meet in its inputs; t2t's own errors carry their status
# (t2t/errors.py). An error of a type neither covers (a bug) keeps its traceback. A tool may pass `extra`
# entries for its own inputs (train.py counts any other OSError as a failed write, the tools that parse
# free-form values count ValueError).
BUILTIN_EXIT_STATUS: dict[type, int] = {
    KeyboardInterrupt: EXIT_INTERRUPTED,
    FileNotFoundError: EXIT_USAGE,
    OSError: EXIT_USAGE,  # an input that cannot be read, an output folder that cannot be written
}


def exit_status(error: BaseException, extra: Optional[Mapping[type, int]] = None) -> Optional[int]:
    """The exit status for `error`: its most specific class in `extra`, its own, or the built-in table; else None."""
    for cls in type(error).__mro__:
        if extra and cls in extra:
            return extra[cls]
        if "exit_status" in vars(cls):
            return cls.exit_status
        if cls in BUILTIN_EXIT_STATUS:
            return BUILTIN_EXIT_STATUS[cls]
    return None


def run_main(prog: str, body: Callable[[], int], *, interrupted: Union[str, Callable[[], str]] = "stopped",
             extra: Optional[Mapping[type, int]] = None,
             on_error: Optional[Callable[[str, int], None]] = None) -> int:
    """body()'s status; for an error with an exit status: `prog: error: <one line>` on stderr and that status.

    Ctrl-C prints `prog: interrupted (Ctrl-C): <interrupted>` (a string, or a function giving one).
    `on_error(message, status)` is called before the line is printed (train.py logs and records it).
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
        message = one_line(e) + getattr(e, "hint", "")
        if on_error is not None:
            on_error(message, status)
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return status

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def one_line(error: BaseException) -> str:
    """The message of `error` on one line; for errors re-raised from a data-loader worker, the original one."""
    text = _ANSI_ESCAPE.sub("", str(error)).strip() or type(error).__name__
    if "Original Traceback" in text:  # DataLoader workers wrap the message in the worker's traceback
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


HELP_CONFIG = "list every config key (section.key) with its type, default and allowed values, and exit"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line of stderr (exit status 2), like every other error of the scripts.

    A tool that reads a config and takes section.key=value overrides calls `add_help_config()`, so each of
    them answers `--help-config` with the same reference (t2t/config_help.py).
    """

    def add_help_config(self) -> None:
        """`--help-config`: print every config key with its type, default and allowed values, and exit."""
        self.add_argument("--help-config", action=HelpConfigAction, help=HELP_CONFIG)

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
