"""Deterministic record order with small integer cursors: the basis of exact resume.

Every stream is a pure function of (seed, epoch) and can be restarted right
after any record it has produced from a tuple of ints (a cursor):

- `round_robin` reads the epoch's files `cycle_length` at a time, one record
  from each in turn. Its cursor is (next_file, turn, then file and records
  read for each slot): restarting opens only the files of the open slots and
  reads past at most one shard's worth of records in each; finished files
  are never touched again.
- `block_shuffle` permutes consecutive blocks of `block_size` records with a
  seed per block. Its cursor is the inner cursor at the block's start plus
  (block index, offset in block), so restarting reads one block again and
  drops what was already delivered. Mixing is as local as a shuffle buffer of
  the same size, but unlike a shuffle buffer the state needs no contents.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")
Cursor = tuple[int, ...]
_MASK64 = (1 << 64) - 1


def rng(*key: int) -> np.random.Generator:
    """A numpy Generator seeded by a tuple of non-negative ints."""
    return np.random.default_rng([int(k) for k in key])


def _splitmix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hash64(*values: int) -> int:
    """A well-mixed 64-bit hash of ints: cheap per-record randomness without RNG state."""
    h = 0
    for v in values:
        h = _splitmix(h ^ (v & _MASK64))
    return h


def uniform(*values: int) -> float:
    """A float in [0, 1) determined by `values`."""
    return (hash64(*values) >> 11) * 2.0**-53


def epoch_order(n: int, epoch: int, key: Sequence[int], *, shuffle: bool, resample: bool) -> np.ndarray:
    """Indices 0..n-1 in the order of `epoch`, int64 [n].

    resample: n draws with replacement (webdataset's resampled shards);
    shuffle: a permutation; neither: the identity (evaluation).
    """
    if resample:
        return rng(*key, epoch).integers(0, n, size=n)
    if shuffle:
        return rng(*key, epoch).permutation(n)
    return np.arange(n)


def round_robin_start(cycle_length: int) -> Cursor:
    """The cursor before the first record: no file opened, every slot empty."""
    return (0, 0) + (-1, 0) * cycle_length


def round_robin(
    files: Sequence[T],
    open_file: Callable[[T], Iterator[object]],
    cycle_length: int,
    cursor: Cursor,
) -> Iterator[tuple[object, Cursor]]:
    """Records of `files` read `cycle_length` files at a time, one record per file in turn.

    Yields (record, cursor after it). A finished file's slot takes the next
    file at once. `open_file` must yield the same records each time it is
    called on a file.
    """
    next_file, turn = cursor[0], cursor[1]
    slots: list[list | None] = []  # [file index, records read, iterator] or None
    for s in range(cycle_length):
        index, count = cursor[2 + 2 * s], cursor[3 + 2 * s]
        if index < 0:
            slots.append(None)
            continue
        records = open_file(files[index])
        for _ in itertools.islice(records, count):
            pass
        slots.append([index, count, records])

    def current() -> Cursor:
        flat = [v for slot in slots for v in ((slot[0], slot[1]) if slot else (-1, 0))]
        return (next_file, turn, *flat)

    while True:
        slot = slots[turn]
        if slot is None:
            if next_file < len(files):
                slot = slots[turn] = [next_file, 0, open_file(files[next_file])]
                next_file += 1
            elif all(s is None for s in slots):
                return
            else:
                turn = (turn + 1) % cycle_length
                continue
        record = next(slot[2], None)
        if record is None:
            slots[turn] = None
            continue
        slot[1] += 1
        turn = (turn + 1) % cycle_length
        yield record, current()


def block_shuffle(
    open_inner: Callable[[Cursor], Iterator[tuple[object, Cursor]]],
    cursor: Cursor,
    block_size: int,
    key: Sequence[int],
) -> Iterator[tuple[object, Cursor]]:
    """Records of an inner stream, each block of `block_size` permuted by rng(*key, block).

    cursor = (*inner cursor at the block's start, block index, offset in block).
    block_size <= 1 keeps the order (evaluation).
    """
    *start, block, offset = cursor
    inner = open_inner(tuple(start))
    size = max(block_size, 1)
    while True:
        chunk = list(itertools.islice(inner, size))
        if not chunk:
            return
        order = rng(*key, block).permutation(len(chunk)) if len(chunk) > 1 else [0]
        end = chunk[-1][1]
        for j in range(offset, len(chunk)):
            after = (*end, block + 1, 0) if j + 1 == len(chunk) else (*start, block, j + 1)
            yield chunk[order[j]][0], after
        start, block, offset = list(end), block + 1, 0
