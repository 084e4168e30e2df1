"""The training loader's batch buffers hand over exactly default_collate's batches, and never overwrite one in use."""
from __future__ import annotations

import collections
import logging

import torch
import torch.utils._pytree as pytree
from torch.utils.data import DataLoader, Dataset

from t2t.data import batch_buffers
from t2t.data.batch_buffers import BufferedLoader
from t2t.data.loader import build_train_loader, set_loader_epoch
from t2t.data.sampler import TrainSampler

Pair = collections.namedtuple("Pair", "index third")


class Samples(Dataset):
    """Every kind of leaf the buffers take: uint8 and float tensors, a dict, a namedtuple, ints and floats."""

    def __len__(self) -> int:
        return 60

    def __getitem__(self, key):
        g = torch.Generator().manual_seed(int(key))
        image = torch.randint(0, 256, (3, 6, 5), generator=g, dtype=torch.uint8)
        return image, {"values": torch.randn(2, 3, generator=g).half(), "pair": Pair(int(key), int(key) / 3)}, int(key)


class Named(Samples):
    def __getitem__(self, key):
        return super().__getitem__(key)[0], f"image-{key}"


def _reference(dataset: Dataset, epoch: int, start: int = 0) -> list:
    sampler = TrainSampler(len(dataset), seed=3)
    sampler.set_epoch(epoch, start)
    return list(DataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True))


def _assert_same(batch, expected) -> None:
    leaves, spec = pytree.tree_flatten(batch)
    want, want_spec = pytree.tree_flatten(expected)
    assert spec == want_spec
    for got, ref in zip(leaves, want):
        if isinstance(ref, torch.Tensor):
            assert got.dtype == ref.dtype and got.shape == ref.shape and torch.equal(got, ref)
        else:
            assert got == ref


def _loader(dataset: Dataset, batch_bytes: int = 1 << 16) -> BufferedLoader:
    loader = build_train_loader(dataset, batch_size=4, sampler=TrainSampler(len(dataset), seed=3), workers=2,
                                prefetch_factor=2, batch_bytes=batch_bytes)
    assert isinstance(loader, BufferedLoader)
    return loader


def test_batches_equal_default_collate_across_epochs_resume_and_a_broken_off_epoch():
    loader = _loader(Samples())
    set_loader_epoch(loader, 0)
    for i, batch in enumerate(loader):  # broken off: the batches in flight come back to a new iteration
        if i == 5:
            break
    for epoch, start in ((0, 0), (1, 0), (1, 24), (2, 0)):
        set_loader_epoch(loader, epoch, start)
        expected = _reference(Samples(), epoch, start)
        count = 0
        for batch, want in zip(loader, expected):
            _assert_same(batch, want)
            count += 1
        assert count == len(expected) == len(loader)
    assert loader.fallbacks == 0  # every batch came through a buffer (none kept, all fit)


def test_kept_batches_are_never_overwritten():
    loader = _loader(Samples())
    set_loader_epoch(loader, 1)
    kept = list(loader)  # 15 batches held, 7 buffers: the rest come the usual way
    assert loader.fallbacks == len(kept) - (2 * 2 + batch_buffers.SPARE_BUFFERS)
    for batch, want in zip(kept, _reference(Samples(), 1)):
        _assert_same(batch, want)
    del kept
    set_loader_epoch(loader, 2)
    before = loader.fallbacks
    for batch, want in zip(loader, _reference(Samples(), 2)):
        _assert_same(batch, want)
    assert loader.fallbacks == before  # the buffers came free with the batches


def test_a_view_or_array_of_a_batch_keeps_its_buffer():
    loader = _loader(Samples())
    set_loader_epoch(loader, 0)
    iterator = iter(loader)
    first = next(iterator)
    array = first[0][1:].numpy()  # only a numpy array over part of the buffer stays
    copy = array.copy()
    del first
    for _ in iterator:
        pass
    assert (array == copy).all()


def test_batches_too_large_for_the_buffers_come_the_usual_way_with_one_warning(caplog):
    loader = _loader(Samples(), batch_bytes=256)
    set_loader_epoch(loader, 0)
    with caplog.at_level(logging.WARNING, logger="t2t.data.batch_buffers"):
        for batch, want in zip(loader, _reference(Samples(), 0)):
            _assert_same(batch, want)
    assert loader.fallbacks == len(loader)
    warnings = [r.getMessage() for r in caplog.records if "larger than the loader's" in r.getMessage()]
    assert len(warnings) == 1 and "0.0 MiB batch buffers" in warnings[0]


def test_leaves_default_collate_treats_its_own_way_come_the_usual_way():
    loader = _loader(Named())
    set_loader_epoch(loader, 0)
    for batch, want in zip(loader, _reference(Named(), 0)):
        assert batch[1] == want[1] and torch.equal(batch[0], want[0])
    assert loader.fallbacks == len(loader)


def test_pinning_copies_out_and_frees_the_buffer(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: self.clone())  # no CUDA here
    pool = batch_buffers._Pool(1, 1 << 16)
    dataset = batch_buffers._BufferedDataset(Samples(), pool)
    buffer = pool.take()
    filled = dataset.__getitems__(batch_buffers._KeysForBuffer([0, 1, 2, 3], pool.id, buffer))
    assert pool.take() == -1  # being written
    pinned = filled.pin_memory()
    _assert_same(pinned, list(DataLoader(Samples(), batch_size=4))[0])
    assert pool.take() == buffer  # the copies hold no part of it


def test_no_buffers_without_persistent_workers_or_a_size():
    dataset = Samples()
    sampler = TrainSampler(len(dataset), seed=3)
    assert isinstance(build_train_loader(dataset, batch_size=4, sampler=sampler, workers=0, batch_bytes=1 << 16),
                      DataLoader)
    assert isinstance(build_train_loader(dataset, batch_size=4, sampler=sampler, workers=2), DataLoader)
