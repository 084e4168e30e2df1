"""Training batches written by the loader workers into shared buffers made once, instead of a new one per batch.

A DataLoader worker normally collates each batch into freshly made shared memory and hands the
training process its file descriptor; the training process maps it and, when the batch is dropped,
the kernel frees it. At ImageNet sizes (19 MB per uint8 batch of 128 at 224 px) that freeing, the
page faults of a new mapping and the descriptor's transfer are most of what the Pillow feed costs
the training process. Here the loader owns a ring of buffers made before its workers start:

* the batch sampler (run in the training process) names, with each batch of sample keys, a buffer
  that is neither being written by a worker nor still referenced by anything the loader handed out
  (the buffer's storage use count: every tensor or array over it counts);
* the worker collates into that buffer, as ``default_collate`` would (same containers, dtypes and
  values), and sends back only its layout;
* the training process turns the layout into tensors over the buffer (or, with ``pin_memory``,
  the DataLoader's pinning thread copies them into pinned memory, which frees the buffer at once).

Nothing is ever overwritten while in use: a consumer that keeps batches (a list of them, say) just
leaves its buffers taken, and further batches come the usual way (a new shared tensor each) until
buffers come free. A batch that does not fit its buffer, or holds something ``default_collate``
treats specially (strings, bools, None), also comes the usual way. Batches are the same values
either way; only where they live differs.
"""
from __future__ import annotations

import itertools
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, default_collate
from torch.utils.data._utils.pin_memory import pin_memory as _pin_memory

__all__ = ["SPARE_BUFFERS", "BufferedLoader", "batch_buffers_available"]

_logger = logging.getLogger(__name__)

_ALIGN = 64  # bytes: every array of a batch starts on a cache line (and any dtype's alignment)
SPARE_BUFFERS = 3  # beyond workers x prefetch: the batch in use, the one before it, one spare


def batch_buffers_available() -> bool:
    """Whether this torch exposes a storage's use count (the test that a buffer is free)."""
    return hasattr(torch._C, "_storage_Use_Count")


def _use_count(buffer: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(buffer.untyped_storage()._cdata)


class _Pool:
    """The buffers and, in the training process, which of them are taken (written, or referenced)."""

    _registry: "weakref.WeakValueDictionary[int, _Pool]" = weakref.WeakValueDictionary()
    _ids = itertools.count()

    def __init__(self, count: int, nbytes: int) -> None:
        self.nbytes = nbytes
        # Made as shared memory directly: untouched pages cost nothing until a worker writes them.
        self.buffers = [torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))
                        for _ in range(count)]
        self.idle_use = _use_count(self.buffers[0])  # the pool's own reference, as measured
        self.writing = [False] * count
        self.lock = threading.Lock()  # the pinning thread frees buffers while the sampler takes them
        self.fallbacks = 0  # batches that came the usual way: no buffer free, too large, or not collatable here
        self.warned = False
        self.id = next(self._ids)
        _Pool._registry[self.id] = self

    def take(self) -> int:
        """A free buffer, now marked as being written; -1 when every one is taken."""
        with self.lock:
            for index, buffer in enumerate(self.buffers):
                if not self.writing[index] and _use_count(buffer) == self.idle_use:
                    self.writing[index] = True
                    return index
        return -1

    def written(self, index: int) -> None:
        with self.lock:
            self.writing[index] = False

    def restart(self) -> None:
        """A new iteration: the previous one's batches have all come back (or were dropped by the DataLoader)."""
        with self.lock:
            self.writing = [False] * len(self.buffers)

    def note_fallback(self, reason: str) -> None:
        self.fallbacks += 1
        if reason == "size" and not self.warned:
            self.warned = True
            _logger.warning("a training batch is larger than the loader's %.1f MiB batch buffers; such batches "
                            "are handed over in new shared memory each (slower, same values)", self.nbytes / 2**20)


class _KeysForBuffer(list):
    """One batch's sample keys, and the buffer to collate them into (-1: none free)."""

    def __init__(self, keys: Sequence[Any], pool_id: int, buffer: int) -> None:
        super().__init__(keys)
        self.pool_id = pool_id
        self.buffer = buffer


class _BufferBatches(Sampler):
    """Batches of the sampler's keys, each naming a free buffer; runs in the training process."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, pool: _Pool) -> None:
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.pool = pool

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[_KeysForBuffer]:
        # The body starts at the first batch asked for, which the DataLoader asks only after the
        # persistent workers have finished every batch of the previous iteration.
        self.pool.restart()
        for keys in self.batches:
            yield _KeysForBuffer(keys, self.pool.id, self.pool.take())


@dataclass(frozen=True)
class _Leaf:
    offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def _structure(sample: Any) -> Any:
    """The sample's containers with its leaves as None: what a batch's layout must match (or raise TypeError)."""
    if isinstance(sample, (torch.Tensor, np.ndarray, float)) or (isinstance(sample, int) and not isinstance(sample, bool)):
        return None
    if isinstance(sample, tuple) and hasattr(sample, "_fields"):
        return (type(sample), tuple(_structure(v) for v in sample))
    if isinstance(sample, (tuple, list)):
        return (list, tuple(_structure(v) for v in sample))  # default_collate makes lists of both
    if type(sample) is dict:
        return (dict, tuple((k, _structure(v)) for k, v in sample.items()))
    raise TypeError(type(sample).__name__)


def _leaves(samples: Sequence[Any], structure: Any) -> Iterator[list[Any]]:
    """Per leaf of `structure`, that leaf of every sample."""
    if structure is None:
        yield list(samples)
        return
    kind, children = structure
    for i, child in enumerate(children):
        key, child = child if kind is dict else (i, child)
        yield from _leaves([s[key] for s in samples], child)


def _build(structure: Any, leaves: Iterator[Any]) -> Any:
    if structure is None:
        return next(leaves)
    kind, children = structure
    if kind is dict:
        return {key: _build(child, leaves) for key, child in children}
    values = [_build(child, leaves) for child in children]
    return values if kind is list else kind(*values)


def _stacked(values: list[Any]) -> tuple[list[torch.Tensor], tuple[int, ...]]:
    """One leaf of every sample -> (tensors to stack, or one tensor of the whole batch; the batch's shape),
    as default_collate would make it (TypeError where this module leaves it to default_collate)."""
    first = values[0]
    if isinstance(first, float):
        return [torch.tensor(values, dtype=torch.float64)], (len(values),)
    if isinstance(first, int):
        return [torch.tensor(values)], (len(values),)
    tensors = [torch.as_tensor(v) for v in values]
    if isinstance(first, np.ndarray) and first.dtype.kind in "SaUO":
        raise TypeError("arrays of strings or objects")
    if not all(t.dtype == tensors[0].dtype and t.shape == tensors[0].shape for t in tensors):
        raise TypeError("leaves differ in shape or dtype")
    return tensors, (len(tensors),) + tuple(tensors[0].shape)


def _nbytes(leaf: "_Leaf") -> int:
    return int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize


def _view(base: torch.Tensor, leaf: "_Leaf") -> torch.Tensor:
    return base[leaf.offset:leaf.offset + _nbytes(leaf)].view(leaf.dtype).view(leaf.shape)


class _Filled:
    """A batch collated into a buffer: its layout, made into tensors in the training process."""

    def __init__(self, pool_id: int, buffer: int, structure: Any, leaves: list[_Leaf]) -> None:
        self.pool_id, self.buffer, self.structure, self.leaves = pool_id, buffer, structure, leaves

    def tensors(self) -> Any:
        """The batch as tensors over the buffer (which then stays taken while any of them lives)."""
        pool = _Pool._registry[self.pool_id]
        views = [_view(pool.buffers[self.buffer], leaf) for leaf in self.leaves]
        batch = _build(self.structure, iter(views))
        pool.written(self.buffer)
        return batch

    def pin_memory(self, device: Optional[str] = None) -> Any:
        """Called by the DataLoader's pinning thread: pinned copies, and the buffer is free again."""
        leaves = (values[0].pin_memory() for values in _leaves([self.tensors()], self.structure))
        return _build(self.structure, leaves)


class _BufferedDataset(Dataset):
    """The dataset, read in batches (``__getitems__``, in the workers) and collated into the named buffer."""

    def __init__(self, dataset: Dataset, pool: _Pool) -> None:
        self.dataset = dataset
        self.buffers = pool.buffers  # inherited by (or sent once to) each worker at its start
        self.nbytes = pool.nbytes

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        return self.dataset[key]

    def __getitems__(self, keys: _KeysForBuffer) -> Any:
        samples = [self.dataset[key] for key in keys]
        if keys.buffer < 0:
            return _Usual(samples, "busy")
        try:
            structure = _structure(samples[0])
            if any(_structure(s) != structure for s in samples[1:]):
                raise TypeError("samples differ")
            stacks = [_stacked(values) for values in _leaves(samples, structure)]
        except TypeError:
            return _Usual(samples, "type")
        leaves, offset = [], 0
        for tensors, shape in stacks:
            leaves.append(_Leaf(offset, tensors[0].dtype, shape))
            offset += -(-_nbytes(leaves[-1]) // _ALIGN) * _ALIGN
        if offset > self.nbytes:
            return _Usual(samples, "size")
        for leaf, (tensors, _) in zip(leaves, stacks):
            out = _view(self.buffers[keys.buffer], leaf)
            if tensors[0].shape == leaf.shape:
                out.copy_(tensors[0])  # python numbers: already one tensor of the whole batch
            else:
                torch.stack(tensors, out=out)
        return _Filled(keys.pool_id, keys.buffer, structure, leaves)


class _Usual:
    """Samples that go through default_collate (a new shared tensor per batch), and why."""

    def __init__(self, samples: list[Any], reason: str) -> None:
        self.samples, self.reason = samples, reason


def _collate(data: Any) -> Any:
    """The DataLoader's collate_fn: a filled buffer passes as it is, other batches are collated as usual."""
    if isinstance(data, _Usual):
        return _Fallback(default_collate(data.samples), data.reason)
    return data


class _Fallback:
    def __init__(self, batch: Any, reason: str) -> None:
        self.batch, self.reason = batch, reason

    def pin_memory(self, device: Optional[str] = None) -> "_Fallback":
        return _Fallback(_pin_memory(self.batch), self.reason)


class _Iterator:
    def __init__(self, batches: Iterator[Any], pool: _Pool) -> None:
        self.batches, self.pool = batches, pool

    def __iter__(self) -> "_Iterator":
        return self

    def __next__(self) -> Any:
        data = next(self.batches)
        if isinstance(data, _Filled):
            return data.tensors()
        if isinstance(data, _Fallback):
            self.pool.note_fallback(data.reason)
            return data.batch
        return data  # pinned in the pinning thread from a buffer

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def _shutdown_workers(self) -> None:
        shutdown = getattr(self.batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


class BufferedLoader:
    """A training DataLoader whose persistent workers collate into a ring of shared buffers (module docstring).

    Quacks like the DataLoader it wraps: ``sampler`` and ``dataset`` are the ones given (set_loader_epoch
    reaches them), ``batch_size``, ``len()`` and iteration as usual.
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, sampler: Sampler, workers: int, drop_last: bool,
                 prefetch_factor: int, batch_bytes: int, **loader_kwargs: Any) -> None:
        if workers <= 0:
            raise ValueError(f"batch buffers need loader workers, got workers={workers}")
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.pool = _Pool(workers * prefetch_factor + SPARE_BUFFERS, batch_bytes)
        self.loader = DataLoader(_BufferedDataset(dataset, self.pool),
                                 batch_sampler=_BufferBatches(sampler, batch_size, drop_last, self.pool),
                                 num_workers=workers, prefetch_factor=prefetch_factor, persistent_workers=True,
                                 collate_fn=_collate, **loader_kwargs)

    @property
    def fallbacks(self) -> int:
        """Batches handed over the usual way (no buffer free, too large, or not collatable into one)."""
        return self.pool.fallbacks

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> _Iterator:
        return _Iterator(iter(self.loader), self.pool)
