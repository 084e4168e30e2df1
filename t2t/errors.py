"""The errors t2t raises for its user, each carrying the exit status a command-line tool ends with.

The bottom of the package: it imports nothing, so any module may raise these. A tool's `run_main`
(t2t/cli.py) turns an error into one line on stderr and its `exit_status`; an error of any other type
(a bug) keeps its traceback.
"""
from __future__ import annotations

EXIT_FAILED = 1  # a failure that is not the user's input (torchrun then restarts the group or gives up)
EXIT_USAGE = 2  # the inputs cannot be used as given: arguments, config, data, checkpoint or output files
EXIT_NONFINITE = 3  # training: the loss became NaN or infinite
EXIT_IO = 74  # EX_IOERR: a write failed (full disk, permissions); what was written before is intact
EXIT_INTERRUPTED = 130  # 128 + SIGINT: Ctrl-C

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_IO", "EXIT_NONFINITE", "EXIT_USAGE", "CheckpointError",
           "T2TError", "UsageError"]


class T2TError(Exception):
    """An error whose message is the whole report for the user; a tool exits with `exit_status`.

    `hint`, when set, is appended to the message on the command line (what to do next).
    """

    exit_status: int = EXIT_USAGE
    hint: str = ""


class UsageError(T2TError, ValueError):
    """A command-line argument that cannot be used as given."""


class CheckpointError(T2TError, RuntimeError):
    """A file that cannot serve as weights for the requested model."""
