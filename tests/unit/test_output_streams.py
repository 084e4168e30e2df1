"""An output is a regular file or it is left alone: streams are written into, never renamed over."""
import os
import signal
import socket
import stat

import pytest

from t2t.outputs import OutputError, atomic_output, check_output_file
from train_helpers import read_fifo_in_background


def test_a_fifo_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = str(tmp_path / "results.json")
    os.mkfifo(fifo)
    check_output_file(fifo)  # a stream needs no --overwrite: nothing is replaced
    received = read_fifo_in_background(fifo)
    with atomic_output(fifo) as tmp:
        assert not tmp.startswith(str(tmp_path))  # no temporary file beside a stream
        open(tmp, "w").write('{"top1": 1.0}\n')
    assert received() == b'{"top1": 1.0}\n'
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["results.json"]


def test_dev_stdout_is_written_through_whatever_stdout_is(capfd):
    # Under capfd, stdout is a regular file: /dev/stdout leads to it, and the link in /dev must stay a link.
    check_output_file("/dev/stdout")
    with atomic_output("/dev/stdout") as tmp:
        open(tmp, "w").write("row\n")
    assert capfd.readouterr().out == "row\n" and os.path.islink("/dev/stdout")


def test_a_character_device_stays_a_device(tmp_path):
    null = str(tmp_path / "null")
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
    except PermissionError:
        pytest.skip("making a device node needs root")
    check_output_file(null, overwrite=True)
    with atomic_output(null) as tmp:
        open(tmp, "w").write("{}")
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_a_full_device_is_one_line_and_stays(tmp_path):
    full = str(tmp_path / "full")
    try:
        os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the same device as /dev/full
    except PermissionError:
        pytest.skip("making a device node needs root")
    with pytest.raises(OutputError, match=r"could not write to .*full'.*No space left on device"):
        with atomic_output(full) as tmp:
            open(tmp, "w").write("{}")
    assert stat.S_ISCHR(os.stat(full).st_mode) and os.listdir(tmp_path) == ["full"]


def test_a_socket_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "s.json")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    try:
        for call in (lambda: check_output_file(path, overwrite=True, flag="--json"),
                     lambda: atomic_output(path).__enter__()):
            with pytest.raises(OutputError, match=r"s.json' is a socket, not a regular file"):
                call()
        assert stat.S_ISSOCK(os.stat(path).st_mode) and os.listdir(tmp_path) == ["s.json"]
    finally:
        server.close()


def test_a_ctrl_c_held_back_while_workers_start_stops_them_before_it_propagates():
    from t2t.outputs import workers_stopped

    class Started:  # what iter(DataLoader) returns: an iterator owning worker processes
        stopped = False

        def __next__(self):
            raise StopIteration

        def _shutdown_workers(self):
            Started.stopped = True

    class Loader:
        def __iter__(self):
            os.kill(os.getpid(), signal.SIGINT)  # lands while the workers start: held back until they run
            return Started()

    with pytest.raises(KeyboardInterrupt):
        with workers_stopped(Loader()):
            raise AssertionError("the Ctrl-C held back is raised before the loop starts")
    assert Started.stopped  # not left to the interpreter's exit, where its threads print tracebacks
