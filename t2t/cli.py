"""What train.py and validate.py share: one-line error messages and an argument parser that gives them."""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import NoReturn, Sequence

__all__ = ["ArgumentParser", "UsageError", "check_output_folder", "one_line"]

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


def list_images(inputs: Sequence[str]) -> list[str]:
    """Image files named, or found (recursively, sorted) under the folders named."""
    from .data.dataset import IMG_EXTENSIONS

    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            for dirpath, _, names in sorted(os.walk(item, followlinks=True)):
                paths.extend(os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UsageError(f"--images {item!r}: no such file or folder")
    if not paths:
        raise UsageError(f"--images {' '.join(inputs)}: no image files ({', '.join(IMG_EXTENSIONS)})")
    return paths
