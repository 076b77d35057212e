"""Encoding a stream of rows in fixed-size batches, so a jitted encoder compiles once."""
from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

Encoder = Callable[[np.ndarray], jax.Array]


def pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """rows [n, ...] (0 < n <= size) -> [size, ...], the added rows copies of the last one.

    Copies of a real row are valid input to any encoder; callers drop their outputs.
    """
    return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows), axis=0)])


class BatchedEncoder:
    """Collects rows [n, ...] in any amounts and encodes them in batches of exactly `batch_size`.

    Every call to `encode` sees [batch_size, ...]; the final partial batch is
    padded by repeating its last row and the padding outputs are dropped.
    Outputs stay on device until `result()`, so encoding overlaps data loading.
    """

    def __init__(self, encode: Encoder, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._encode = encode
        self._batch_size = batch_size
        self._pending: list[np.ndarray] = []
        self._num_pending = 0
        self._outputs: list[jax.Array] = []

    def add(self, rows: np.ndarray) -> None:
        """Queues rows [n, ...] (n may be 0), encoding each batch as soon as it is full."""
        rows = np.asarray(rows)
        while len(rows):
            take = rows[: self._batch_size - self._num_pending]
            self._pending.append(take)
            self._num_pending += len(take)
            rows = rows[len(take) :]
            if self._num_pending == self._batch_size:
                self._encode_pending()

    def result(self) -> np.ndarray:
        """Encodes what is left; all outputs in the order added, float32 [N, E]."""
        if self._num_pending:
            self._encode_pending()
        if not self._outputs:
            raise ValueError("Nothing was encoded: no rows were added")
        return np.concatenate([np.asarray(out, np.float32) for out in self._outputs])

    def _encode_pending(self) -> None:
        batch, num_valid = np.concatenate(self._pending), self._num_pending
        self._pending, self._num_pending = [], 0
        self._outputs.append(self._encode(pad_rows(batch, self._batch_size))[:num_valid])
