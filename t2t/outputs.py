"""Files the tools write, written so that nothing a user has is lost.

One rule for every command that writes (train.py's run folder, validate.py, predict.py and the
scripts): an output may never be one of the command's inputs (real paths are compared, so hard links
and symlinks count); an existing file is replaced only when the user asked for it (``--overwrite``);
every file is written under a temporary name in its own folder, flushed to disk and renamed onto its
name only once it is complete and checked, so an interrupted or failed write (Ctrl-C, full disk,
an exporter that fails half way) leaves the previous file or the complete new one, never a part.
The outputs are checked before the work starts, so a bad path costs nothing. An output is a regular
file or it is left alone: a stream (/dev/stdout, a FIFO, a character device such as /dev/null) is
written into, never renamed over, and a socket or block device is refused.
"""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import shutil
import signal
import stat
import tempfile
import threading
from typing import Iterable, Iterator, Optional

from .errors import EXIT_IO, T2TError, UsageError

__all__ = ["INTERRUPTED", "CtrlC", "OutputError", "WriteError", "atomic_output", "check_output_file",
           "check_output_folder_inputs", "same_file", "workers_stopped", "write_failed"]

INTERRUPTED = 130  # 128 + SIGINT, the shell's status for a command stopped by Ctrl-C
TEMP_PREFIX = ".tmp-"


class OutputError(UsageError):
    """An output path that would overwrite an input or an existing file, or cannot be written."""


class WriteError(T2TError, OSError):
    """A write that failed for want of space or a working disk (exit status 74); the message names the file."""

    exit_status = EXIT_IO

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


# Errors of the disk, not of the path asked for: full, over quota, too large, read-only, failing.
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def write_failed(path: str, error: BaseException) -> BaseException:
    """`error` as a WriteError naming `path` if the disk failed it (full disk...); otherwise `error` itself."""
    if isinstance(error, OSError) and not isinstance(error, WriteError) and error.errno in _DISK_ERRORS:
        out = WriteError(f"writing {path!r} failed: {error.strerror or error}; nothing of it was kept (any previous "
                         "file is unchanged): free space and run again")
        out.errno, out.strerror = error.errno, error.strerror
        return out
    return error


def same_file(a: str, b: str) -> bool:
    """True if `a` and `b` name the same file: same inode (hard links, symlinks) or the same real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def _inside(path: str, folder: str) -> bool:
    """True if `path` is `folder` or lies under it (real paths)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_output_file(path: str, *, inputs: Iterable[tuple[str, str]] = (), overwrite: bool = False,
                      flag: str = "--output") -> None:
    """OutputError unless `path` can be written without losing anything; `inputs` are (flag, path) pairs.

    Refused: an input (compared by real path and inode), an existing folder, an existing file without
    `overwrite`, a folder that does not exist or cannot be written in. Nothing is created.
    """
    for input_flag, input_path in inputs:
        if input_path and same_file(path, input_path):
            raise OutputError(f"{flag} {path!r} is the same file as {input_flag} {input_path!r}: writing it would "
                              f"destroy the input; choose another {flag}")
    if os.path.isdir(path):
        raise OutputError(f"{flag} {path!r} is a folder: give a file name")
    if _written_through(path, flag):  # a stream (/dev/stdout, a FIFO): written to, never replaced
        return
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{flag} {path!r} already exists: choose another name, or pass --overwrite to replace it "
                          "(it is kept until the new file is complete)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = "is a file" if os.path.exists(folder) else "does not exist"
        raise OutputError(f"{flag} {path!r}: its folder {folder!r} {what}; create the folder first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path!r}: no permission to write in {folder!r}")


def check_output_folder_inputs(folder: str, *, data_dirs: Iterable[tuple[str, str]] = (),
                               files: Iterable[tuple[str, str]] = (), written: Iterable[str] = (),
                               flag: str = "--output") -> None:
    """OutputError if the run folder `folder` is a data folder or lies inside one, or if an input file sits in
    it under the name of a file the run writes there (`written`: names or glob patterns such as epoch-*.pth)."""
    for data_flag, data_dir in data_dirs:
        if data_dir and os.path.isdir(data_dir) and _inside(folder, data_dir):
            raise OutputError(f"{flag} {folder!r} lies inside {data_flag} {data_dir!r}: the run's files would be "
                              f"mixed with the data; choose a folder outside it")
    patterns = list(written)
    for input_flag, input_path in files:
        if not input_path or not os.path.exists(input_path):
            continue
        real = os.path.realpath(input_path)
        if same_file(os.path.dirname(real), folder) and any(fnmatch.fnmatch(os.path.basename(real), p)
                                                           for p in patterns):
            raise OutputError(f"{input_flag} {input_path!r} is a file the run writes in {flag} {folder!r} "
                              f"({os.path.basename(real)}): it would be overwritten; copy it elsewhere or choose "
                              f"another {flag}")


def _written_through(path: str, flag: str) -> bool:
    """True if `path` is a stream that an output is written into rather than renamed onto: a FIFO, a character
    device (/dev/null, a terminal) or any path under /dev or /proc (/dev/stdout is a link there, whatever
    stdout is). Replacing one with a regular file would destroy it (as root, /dev/full became a JSON file).
    OutputError for the other files that are not regular: a socket or a block device is never written."""
    if os.path.abspath(path).startswith(("/dev/", "/proc/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there (or a dangling link): a new regular file
        return False
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return True
    if stat.S_ISSOCK(mode) or stat.S_ISBLK(mode):
        kind = "socket" if stat.S_ISSOCK(mode) else "block device"
        raise OutputError(f"{flag} {path!r} is a {kind}, not a regular file: give a file name (outputs are "
                          f"regular files, or streams such as /dev/stdout or a FIFO, which are written through)")
    return False


def _write_through(tmp: str, path: str) -> None:
    """Copy the finished temporary file into the stream `path`; a failed write names the path."""
    try:
        with open(tmp, "rb") as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except OSError as e:
        raise OutputError(f"could not write to {path!r}: {e.strerror or e}") from None


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (another thread may be creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_path(path: str, *, folder: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not folder:  # some filesystems cannot fsync a folder; the file itself must reach the disk
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str, *, suffix: Optional[str] = None) -> Iterator[str]:
    """Yield a temporary path in `path`'s folder; when the block ends without an error (the file written and
    checked there), fsync it and rename it onto `path`. On any error or Ctrl-C the temporary file is removed
    and `path` is untouched. The temporary name ends like `path` (exporters and readers go by the suffix).
    A stream (/dev/stdout, a FIFO, a character device) is never replaced: the finished file is written into it."""
    stream = _written_through(path, "output")
    folder = None if stream else os.path.dirname(os.path.abspath(path))  # None: the system's temporary folder
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix if suffix is not None else
                               "-" + os.path.basename(path), dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs follow the umask like any other file
        os.close(fd)
        yield tmp
        if stream:
            _write_through(tmp, path)
            os.remove(tmp)
            return
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        failed = write_failed(path, e)
        if failed is e:
            raise
        raise failed from e
    _fsync_path(folder, folder=True)  # make the rename itself durable


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (see atomic_output)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)


class CtrlC:
    """While active, Ctrl-C raises KeyboardInterrupt and is also remembered, for `check()` to raise it again.

    Python drops an exception raised where it cannot propagate (its own at-fork handlers, which run
    when DataLoader workers start, and __del__ methods): a Ctrl-C landing there would be lost and the
    command would run on. A loop that calls check() once per batch stops at the next batch instead.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed since the start."""
        if self.requested:
            raise KeyboardInterrupt


@contextlib.contextmanager
def workers_stopped(loader: Iterable) -> Iterator[Iterator]:
    """Yield an iterator over `loader` whose worker processes start with Ctrl-C held back, and are shut down
    at once on leaving.

    A Ctrl-C that lands while the workers are forked interrupts Python's own at-fork handlers, where the
    exception cannot propagate: Python prints its traceback and drops it. While the workers start, Ctrl-C is
    only noted (a handler that does not raise; blocking the signal in this thread would not do, as any other
    thread of the process may take it); once they run, a Ctrl-C noted is raised as the handler before would
    have raised it. On leaving (Ctrl-C or an error), the workers are stopped before the interpreter exits,
    where the thread that shares their tensors could print a traceback after the one-line message.
    """
    noted: list[int] = []
    held = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: noted.append(signum)) if held else None
    batches = None
    try:
        try:
            batches = iter(loader)
        finally:
            if held:
                signal.signal(signal.SIGINT, previous)
        if noted:
            if callable(previous):
                previous(signal.SIGINT, None)  # e.g. CtrlC's handler: noted there too, then raised
            if previous != signal.SIG_IGN:
                raise KeyboardInterrupt
        yield batches
    finally:  # also when the Ctrl-C held back is raised: the workers just started are stopped too
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
