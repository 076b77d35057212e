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
uninterrupted one would have seen. A process reading several data streams
keeps one such position per stream.

This was chosen over checkpointing tf.data iterators (`tf.train.Checkpoint`),
which store every buffer (a shuffle buffer of encoded images, prefetched
batches: hundreds of MB per host), cannot save Python-backed readers, and
break when the pipeline graph changes.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from clip_jax.data.producer import StateLayout, StreamState
from clip_jax.data.records import ERROR_KINDS, NoValidDataError

log = logging.getLogger("clip_jax.data")
_LOG_EVERY_S = 60.0
_BAD_IMAGE = ERROR_KINDS.index("bad_image")


class StreamedPipeline(Protocol):
    """What the iterator needs of a pipeline (`Pipeline` is one)."""

    layout: StateLayout

    def dataset(self, state: dict[str, Any] | None = None) -> tf.data.Dataset: ...

    def state_dict(self, states: Sequence[StreamState]) -> dict[str, Any]: ...

    def parse_state(self, state: dict[str, Any] | None) -> list[StreamState]: ...


class DataIterator:
    """Iterates host-local batches (dicts of read-only numpy arrays) of a Pipeline, resumably."""

    def __init__(self, pipeline: StreamedPipeline, state: dict[str, Any] | None = None):
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
        self._states = [
            _with_decode_failures(self._pipeline.layout.unpack(vector), int(failures))
            for vector, failures in zip(meta["state"], meta["decode_failures"], strict=True)
        ]
        self._maybe_log()
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able position after the last batch returned (see the module docstring)."""
        return self._pipeline.state_dict(self._states)

    def set_state(self, state: dict[str, Any] | None) -> None:
        """Continues after the batch at which `state` was taken (None: from the start)."""
        self._states = self._pipeline.parse_state(state)
        self._batches = self._pipeline.dataset(self._pipeline.state_dict(self._states)).as_numpy_iterator()

    def error_counts(self) -> dict[str, int]:
        """Skipped records and files so far in this process's streams, by reason (records.ERROR_KINDS)."""
        totals = np.sum([state.errors for state in self._states], axis=0)
        return {kind: int(n) for kind, n in zip(ERROR_KINDS, totals, strict=True)}

    def _maybe_log(self) -> None:
        total = sum(self.error_counts().values())
        now = time.monotonic()
        if total > self._logged_total and now - self._last_log > _LOG_EVERY_S:
            log.warning("input pipeline skipped %d records so far: %s", total, self.error_counts())
            self._last_log, self._logged_total = now, total


def _with_decode_failures(state: StreamState, failures: int) -> StreamState:
    """The stream's state with images that failed to decode in tf.data added to its skip counts."""
    errors = list(state.errors)
    errors[_BAD_IMAGE] += failures
    return StreamState(state.m, tuple(errors), state.cursors)
