"""From host-local numpy batches to global jax.Arrays, prefetched onto the devices.

Each process loads its own share of the global batch; the global array is
assembled with `jax.make_array_from_process_local_data`, split along the
batch axis over the mesh's batch axes ('data', 'fsdp' where present).
"""
from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np


class StatefulIterator(Protocol):
    """What DataIterator offers: batches plus resume state and skip counts."""

    def __next__(self) -> dict[str, np.ndarray]: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any] | None) -> None: ...

    def error_counts(self) -> dict[str, int]: ...


def make_global_batch(batch: Mapping[str, np.ndarray], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Host-local arrays [B_local, ...] -> global jax.Arrays [B_local * process_count, ...]."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


class DevicePrefetcher:
    """Keeps `size` global batches in flight on the devices ahead of the training step.

    get_state() is the state after the last batch *returned* (not the ones
    prefetched), so a checkpoint taken between steps resumes exactly.
    """

    def __init__(self, iterator: StatefulIterator, sharding: jax.sharding.Sharding, size: int = 2):
        self._iterator, self._sharding, self._size = iterator, sharding, size
        self._queue: collections.deque = collections.deque()
        self._state = iterator.get_state()
        self._errors = iterator.error_counts()

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        while len(self._queue) < self._size:
            try:
                batch = next(self._iterator)
            except StopIteration:
                break
            global_batch = make_global_batch(batch, self._sharding)
            self._queue.append((global_batch, self._iterator.get_state(), self._iterator.error_counts()))
        if not self._queue:
            raise StopIteration
        batch, self._state, self._errors = self._queue.popleft()
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._state

    def set_state(self, state: dict[str, Any] | None) -> None:
        self._queue.clear()
        self._iterator.set_state(state)
        self._state, self._errors = self._iterator.get_state(), self._iterator.error_counts()

    def error_counts(self) -> dict[str, int]:
        return self._errors
