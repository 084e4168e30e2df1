"""Shared set-up of the test suite.

tests/unit/<part>/ mirrors the package (config, data, engine, models): in-process tests of one module
with tiny models; the few that need full-size models are marked slow by hand. tests/integration/ holds
what runs the command-line tools end to end, torchrun groups, restarts and faults: every test there is
marked slow by its folder, so `pytest -m "not slow"` is the quick loop.
"""
import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import zygote  # noqa: E402  (from the folder just put on sys.path)
# Under pytest-xdist (`-n N`) the cores are shared by N workers: each takes its share, and the tools the
# tests start as subprocesses inherit it through OMP_NUM_THREADS, so no core is oversubscribed.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_THREADS = max(1, min(2, _CORES) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_process_settings():
    """Tools run in-process (scripts/benchmark.py's main sets --threads and THP_MEM_ALLOC_ENABLE) change
    process-wide settings; put them back, so no later test computes with another thread count (which
    changes the summation order of reductions, hence the last bits of bit-exact comparisons)."""
    threads, environ = torch.get_num_threads(), dict(os.environ)
    zygote.test_starts()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if os.environ != environ:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(autouse=True)
def _restore_logging():
    """train.py / validate.py run in-process point the root logger at a test's captured output; undo that."""
    handlers = logging.root.handlers[:]
    yield
    for handler in logging.root.handlers:
        if handler not in handlers:
            handler.close()
    logging.root.handlers[:] = handlers


_INTEGRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration") + os.sep


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.path).startswith(_INTEGRATION):
            item.add_marker(pytest.mark.slow)
