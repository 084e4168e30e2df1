"""data.backend=dali: per-sample work in loader worker processes, batches run ahead in DALI, the feed benchmark."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from t2t.data import dali as dali_backend
from t2t.data.dataset import ImageFolderDataset

HAVE_DALI = importlib.util.find_spec("nvidia.dali") is not None
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason='NVIDIA DALI is not installed (pip install -e ".[dali]")')


def _loader(folder, workers, *, augment="full", count=8, batch_size=4):
    from t2t.tools.data_bench import _augment_kwargs, _dali_loader

    return _dali_loader(folder, 32, _augment_kwargs(augment, "rand-m9-mstd0.5-inc1"), batch_size=batch_size, seed=3,
                        threads=workers, count=count)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from t2t.tools.data_bench import make_benchmark_images

    return make_benchmark_images(str(tmp_path_factory.mktemp("photos")), num_images=8, min_size=40, max_size=70)


@needs_dali
@pytest.mark.slow
def test_plans_are_made_in_worker_processes_and_equal_the_in_process_ones(photos, tmp_path, monkeypatch):
    made = dali_backend._TrainPlans.__getitem__

    def recording(self, item):  # which process made each plan (a file per process: the workers are forked)
        open(tmp_path / f"pid-{os.getpid()}", "w").close()
        return made(self, item)

    monkeypatch.setattr(dali_backend._TrainPlans, "__getitem__", recording)
    batches = {}
    for workers in (0, 2):
        loader = _loader(photos, workers)
        loader.dataset.set_epoch(1)
        plans = list(loader.batch_plans())
        assert len(plans) == 2 and plans[0].ints.shape[0] == 4 and plans[0].encoded.dtype == torch.uint8
        batches[workers] = (plans, list(loader))
        pids = {int(p.name.split("-")[1]) for p in tmp_path.iterdir()}
        if workers == 0:
            assert pids == {os.getpid()}
        else:
            assert len(pids) == 2 and os.getpid() not in pids, (pids, os.getpid())
        for p in tmp_path.iterdir():
            p.unlink()
    (plans0, images0), (plans2, images2) = batches[0], batches[2]
    for a, b in zip(plans0, plans2, strict=True):
        assert torch.equal(a.encoded, b.encoded) and torch.equal(a.ints, b.ints) and torch.equal(a.floats, b.floats)
    for (x, tx), (y, ty) in zip(images0, images2, strict=True):
        assert torch.equal(x, y) and torch.equal(tx, ty)


@needs_dali
def test_eval_plans_in_workers_give_the_same_batches(photos):
    loaders = [dali_backend.DaliEvalLoader(ImageFolderDataset(photos), img_size=32, crop_pct=0.875,
                                           interpolation="bicubic", mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=3,
                                           workers=workers) for workers in (0, 2)]
    first, second = (list(loader) for loader in loaders)
    assert [len(t) for _, t in first] == [3, 3, 2]
    for (x, tx), (y, ty) in zip(first, second, strict=True):
        assert torch.equal(x, y) and torch.equal(tx, ty)


@needs_dali
def test_an_overtaken_iteration_cannot_go_on(photos):
    """A newer iteration of the same loader drops the batches the older one had in flight; the older one stops
    with an error instead of handing out the newer one's batches."""
    loader = _loader(photos, 1, augment="crop", batch_size=2)
    loader.resize_in_dali = True
    loader.dataset.set_epoch(0)
    straight = list(loader)
    older = iter(loader)
    assert torch.equal(next(older)[0], straight[0][0])
    newer = list(loader)
    for (x, tx), (y, ty) in zip(newer, straight, strict=True):
        assert torch.equal(x, y) and torch.equal(tx, ty)
    with pytest.raises(RuntimeError, match="iterated again"):
        next(older)


@needs_dali
@pytest.mark.slow
def test_feed_benchmark_reports_both_backends(photos):
    from t2t.tools.feed_bench import run_feed_benchmark

    results = run_feed_benchmark(photos, ("pil", "dali"), img_size=32, batch_size=4, workers=1, rounds=1, steps=20)
    for backend in ("pil", "dali"):
        assert results[f"{backend}_samples_per_epoch"] == 8
        assert results[f"{backend}_main_cpu_us_per_sample"] > 0 and results[f"{backend}_step_loop_slowdown"] > 0
    with pytest.raises(ValueError, match="unknown data backend 'timm'"):
        run_feed_benchmark(photos, ("timm",))


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two cores")
def test_the_pinned_feed_benchmark_gives_the_loop_its_own_core_and_restores_the_affinity(photos):
    from t2t.tools.feed_bench import run_feed_benchmark

    before = os.sched_getaffinity(0)
    results = run_feed_benchmark(photos, ("pil",), img_size=32, batch_size=4, workers=1, rounds=1, steps=20, pin=True)
    assert results["pinned"] and results["pil_step_loop_slowdown"] > 0
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ValueError, match="pinning needs workers > 0"):
        run_feed_benchmark(photos, ("pil",), workers=0, pin=True)
