"""A resumable iterator over a Pipeline: numpy batches, get_state()/set_state(), skip counts.

How resume works. The order of examples is a pure function of the seed:
shards are permuted (or resampled) per epoch, read round-robin and
block-shuffled with per-block seeds; indexed sources are permuted per epoch;
the source of each example in a mixture, its caption in training and its
random crop are hashes of (seed, example index). So the position in the
stream is a handful of integers: the example index, each source's cursor
(epoch, files open and records read in each, block and offset) and the skip
counts. Every example carries that state through tf.data, and the iterator
keeps the state of the last example of the last batch it returned.
`get_state()` is a small JSON-able dict; `set_state()` rebuilds the
pipeline there: finished files are never reopened, open ones are read past
(at most one shard each) and one shuffle block is re-read, with no image
decoded along the way. A resumed run sees exactly the batches an
uninterrupted one would have seen.

This was chosen over checkpointing tf.data iterators (`tf.train.Checkpoint`),
which store every buffer (a shuffle buffer of encoded images, prefetched
batches: hundreds of MB per host), cannot save Python-backed readers, and
break when the pipeline graph changes.
"""
from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf

from clip_jax.data.producer import StreamState
from clip_jax.data.records import ERROR_KINDS, NoValidDataError

if TYPE_CHECKING:
    from clip_jax.data.pipeline import Pipeline

log = logging.getLogger("clip_jax.data")
_LOG_EVERY_S = 60.0
_BAD_IMAGE = ERROR_KINDS.index("bad_image")


class DataIterator:
    """Iterates host-local batches (dicts of read-only numpy arrays) of a Pipeline, resumably."""

    def __init__(self, pipeline: Pipeline, state: dict[str, Any] | None = None):
        self._pipeline = pipeline
        self._last_log, self._logged_total = time.monotonic(), 0
        self.set_state(state)

    def __iter__(self) -> DataIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        try:
            batch, meta = next(self._batches)
        except tf.errors.OpError as e:
            match = re.search(r"NoValidDataError: (.*)", e.message)
            if match:
                raise NoValidDataError(match.group(1).rstrip("]")) from None
            raise
        state = self._pipeline.layout.unpack(meta["state"])
        errors = list(state.errors)
        errors[_BAD_IMAGE] += int(meta["decode_failures"])
        self._state = StreamState(state.m, tuple(errors), state.cursors)
        self._maybe_log()
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able position after the last batch returned (see the module docstring)."""
        return self._pipeline.state_dict(self._state)

    def set_state(self, state: dict[str, Any] | None) -> None:
        """Continues after the batch at which `state` was taken (None: from the start)."""
        self._state = self._pipeline.parse_state(state)
        self._batches = self._pipeline.dataset(self._pipeline.state_dict(self._state)).as_numpy_iterator()

    def error_counts(self) -> dict[str, int]:
        """Skipped records and files so far, by reason (records.ERROR_KINDS)."""
        return dict(zip(ERROR_KINDS, self._state.errors, strict=True))

    def _maybe_log(self) -> None:
        total = sum(self._state.errors)
        now = time.monotonic()
        if total > self._logged_total and now - self._last_log > _LOG_EVERY_S:
            log.warning("input pipeline skipped %d records so far: %s", total, self.error_counts())
            self._last_log, self._logged_total = now, total
