"""Run a command-line script as a fresh process would, without paying the torch + timm import each time.

Most of what a tiny training run costs the suite is the interpreter importing torch, torchvision and
timm (about 4.5 CPU-seconds per process). A zygote is a process started once per test worker that
does those imports and nothing else (no tensor op, so no thread pool exists to be broken by fork).
Each run forks it; the child takes the run's argv, working folder and output files, and runs the
script as ``python SCRIPT ARGS`` would (``__main__``, sys.path[0] the script's folder), then exits
through the interpreter's normal shutdown (atexit hooks, non-daemon threads joined, streams
flushed). The environment is the test worker's, as for ``subprocess.run`` without ``env``. A run asked
for by a test that changed the environment itself (monkeypatch.setenv: conftest.py tells this module
when each test starts) gets a real process instead, since the zygote's imports may have read the old
value; what libraries set for themselves in earlier tests is passed on as a subprocess inherits it.

Tests that need a process of their own (signals sent to it, a ``sitecustomize`` on PYTHONPATH, an
environment of their own, torchrun) start real subprocesses; so does every run when
T2T_TESTS_NO_ZYGOTE=1 is set (to check that nothing here hides a difference).

    python tests/zygote.py SOCKET    # the server (started by `run_script`, not by hand)
"""
from __future__ import annotations

import atexit
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from typing import Optional

_server: Optional[tuple[subprocess.Popen, str]] = None  # the process, its socket
_at_test_start: Optional[dict] = None  # the environment as the running test found it
_PER_TEST = {"PYTEST_CURRENT_TEST"}  # pytest's, set anew for each test


def test_starts() -> None:
    """Called as each test starts (conftest.py): what the environment is before the test changes it."""
    global _at_test_start
    _at_test_start = dict(os.environ)


def _changed_by_the_test() -> bool:
    def ours(env) -> dict:
        return {k: v for k, v in env.items() if k not in _PER_TEST}
    return _at_test_start is not None and ours(os.environ) != ours(_at_test_start)


def _send(conn: socket.socket, obj) -> None:
    data = pickle.dumps(obj)
    conn.sendall(struct.pack("!Q", len(data)) + data)


def _recv(conn: socket.socket):
    head = b""
    while len(head) < 8:
        chunk = conn.recv(8 - len(head))
        if not chunk:
            raise EOFError("the zygote closed the connection")
        head += chunk
    (size,) = struct.unpack("!Q", head)
    data = b""
    while len(data) < size:
        chunk = conn.recv(min(1 << 20, size - len(data)))
        if not chunk:
            raise EOFError("the zygote closed the connection")
        data += chunk
    return pickle.loads(data)


def _serve(path: str) -> None:
    """The server: imports, then one run at a time (fork, report the pid, reap, report the status)."""
    import timm  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import t2t.train  # noqa: F401  (the training tool's own imports)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C of the test run reaches the runs, not this loop
    parent = os.getppid()
    listener.settimeout(5.0)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            if os.getppid() != parent:  # the test worker is gone
                return
            continue
        conn.settimeout(None)
        try:
            request = _recv(conn)
        except EOFError:
            conn.close()
            continue
        if request is None:  # shut down
            conn.close()
            return
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.close()
            _become(**request)  # never returns
        try:
            _send(conn, pid)
        except OSError:
            pass
        _, status = os.waitpid(pid, 0)
        try:
            _send(conn, os.waitstatus_to_exitcode(status))
        except OSError:  # the client gave up (its timeout) and closed
            pass
        conn.close()


def _become(argv: list[str], cwd: str, stdout: str, stderr: str, env: dict) -> None:
    """In the forked child: be `python argv[0] argv[1:]` started in `cwd` with `env`, writing to the two files."""
    import runpy

    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, name in ((1, stdout), (2, stderr)):
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    try:
        if argv[0] == "-m":  # python -m MODULE: sys.path[0] is the working folder
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = [argv[0], *argv[1:]]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        _exit_normally(code)
    except BaseException:
        import traceback

        traceback.print_exc()
        _exit_normally(1)
    _exit_normally(0)


def _exit_normally(code: int) -> None:
    """Exit as the interpreter does at the end of a script: threads joined, atexit hooks run, streams flushed."""
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # join the non-daemon threads, as at interpreter exit
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _start() -> tuple[subprocess.Popen, str]:
    global _server
    if _server is not None and _server[0].poll() is None:
        return _server
    path = os.path.join(tempfile.mkdtemp(prefix="t2t-zygote-"), "socket")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, cwd=os.path.dirname(path))
    deadline = time.monotonic() + 120
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the test zygote did not start")
        time.sleep(0.05)
    _server = (proc, path)
    atexit.register(stop)
    return _server


def stop() -> None:
    global _server
    if _server is None:
        return
    proc, path = _server
    _server = None
    if proc.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(path)
                _send(conn, None)
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def run_script(argv: list, *, cwd: Optional[str] = None, timeout: float) -> subprocess.CompletedProcess:
    """`python argv...` (a script and its arguments, or -m MODULE ...) in `cwd` (default: this one), with stdout
    and stderr captured as text: what subprocess.run([sys.executable, *argv], capture_output=True, text=True)
    gives."""
    argv = [str(a) for a in argv]
    cwd = cwd or os.getcwd()
    if os.environ.get("T2T_TESTS_NO_ZYGOTE") == "1" or _changed_by_the_test():
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    _, path = _start()
    with tempfile.TemporaryDirectory(prefix="t2t-run-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            _send(conn, dict(argv=list(argv), cwd=cwd, stdout=out, stderr=err, env=dict(os.environ)))
            pid = _recv(conn)
            conn.settimeout(timeout)
            try:
                code = _recv(conn)
            except socket.timeout:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([sys.executable, *argv], timeout)
        with open(out, encoding="utf-8", errors="replace") as f:
            stdout = f.read()
        with open(err, encoding="utf-8", errors="replace") as f:
            stderr = f.read()
    return subprocess.CompletedProcess([sys.executable, *argv], code, stdout, stderr)


if __name__ == "__main__":
    _serve(sys.argv[1])
