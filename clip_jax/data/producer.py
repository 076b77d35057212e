"""The Python end of the pipeline: mixes sources, counts skips, and packs chunks for tf.data.

Every example leaves with its index `m` in the mixed stream and the full
state after it (a flat int64 vector, see `StateLayout`). The consumer keeps
the state of the last example it received, so resuming never depends on how
far tf.data's buffers had read ahead.

Which source supplies example m of a stream, and which of an example's
captions is used in training, are hashes of (seed, stream, m): the mixture and
the caption sampling resume exactly with nothing but m in the state.
"""
from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from clip_jax.data.order import Cursor, hash64, uniform
from clip_jax.data.records import ERROR_KINDS, Example, Skipped
from clip_jax.data.sources import Source, stream

log = logging.getLogger("clip_jax.data")
_MIX_SALT, _CAPTION_SALT = 1, 2
# Joins an example's captions in one training text (chain_captions); no caption holds it.
CAPTION_SEPARATOR = "\x1e"
_LOGGED_PER_KIND = 10


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Where the example stream stands after some delivered example.

    m: examples delivered so far (the next example's index in the mixed stream).
    errors: skip counts, aligned with ERROR_KINDS.
    cursors: one full cursor (epoch, *within) per source.
    """

    m: int
    errors: tuple[int, ...]
    cursors: tuple[Cursor, ...]


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Packs a StreamState into a flat int64 vector [m, *errors, *cursor_0, *cursor_1, ...]."""

    cursor_sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        return 1 + len(ERROR_KINDS) + sum(self.cursor_sizes)

    def pack(self, state: StreamState) -> list[int]:
        return [state.m, *state.errors, *itertools.chain.from_iterable(state.cursors)]

    def unpack(self, vector: Sequence[int]) -> StreamState:
        values = [int(v) for v in vector]
        if len(values) != self.size:
            raise ValueError(f"state vector has {len(values)} entries, expected {self.size}")
        errors = tuple(values[1 : 1 + len(ERROR_KINDS)])
        cursors, pos = [], 1 + len(ERROR_KINDS)
        for n in self.cursor_sizes:
            cursors.append(tuple(values[pos : pos + n]))
            pos += n
        return StreamState(values[0], errors, tuple(cursors))


def initial_state(sources: Sequence[Source]) -> StreamState:
    """The state before the first example: every source at the start of epoch 0."""
    return StreamState(0, (0,) * len(ERROR_KINDS), tuple((0, *s.start()) for s in sources))


def produce(
    sources: Sequence[Source],
    weights: Sequence[float],
    *,
    seed: int,
    stream_index: int,
    epochs: int | None,
    training: bool,
    num_captions: int,
    start: StreamState,
    chunk_size: int,
    chain_captions: bool = False,
) -> Iterator[tuple[np.ndarray, ...]]:
    """Chunks of up to `chunk_size` examples, as numpy arrays:

    images object(bytes) [C]; captions object(bytes) [C, K] ("" padded, K =
    num_captions, 1 in training: one caption sampled per example, or with
    `chain_captions` all of them from the sampled one on, joined by CAPTION_SEPARATOR);
    num_captions int32 [C]; labels int32 [C]; m int64 [C]; state int64 [C, D].
    Stops when a source runs out (finite epochs).
    """
    layout = StateLayout(tuple(len(c) for c in start.cursors))
    streams = [stream(s, c, epochs) for s, c in zip(sources, start.cursors, strict=True)]
    cursors, errors, m = list(start.cursors), list(start.errors), start.m
    kind_index = {kind: i for i, kind in enumerate(ERROR_KINDS)}
    logged = [0] * len(ERROR_KINDS)
    bounds = list(itertools.accumulate(weights))
    chunk: list[tuple] = []
    while True:
        k = 0
        if len(streams) > 1:
            k = min(bisect.bisect(bounds, uniform(seed, stream_index, _MIX_SALT, m) * bounds[-1]), len(bounds) - 1)
        for item, cursor in streams[k]:
            cursors[k] = cursor
            if isinstance(item, Example):
                break
            _count(item, kind_index, errors, logged, sources[k].spec.text)
        else:
            break
        if training:
            first = hash64(seed, stream_index, _CAPTION_SALT, m) % max(len(item.captions), 1)
            chosen = item.captions[first:] + item.captions[:first] if chain_captions else item.captions[first : first + 1]
            texts = [CAPTION_SEPARATOR.join(chosen)]
        else:
            texts = list(item.captions[:num_captions]) + [""] * max(num_captions - len(item.captions), 0)
        m += 1
        state = layout.pack(StreamState(m, tuple(errors), tuple(cursors)))
        count = min(len(item.captions), num_captions)
        chunk.append((item.image, [t.encode("utf-8") for t in texts], count, item.label, m - 1, state))
        if len(chunk) == chunk_size:
            yield _arrays(chunk)
            chunk = []
    if chunk:
        yield _arrays(chunk)


def _count(item: Skipped, kind_index: dict[str, int], errors: list[int], logged: list[int], source: str) -> None:
    """Counts a skipped record; logs the first few of each kind (every bad file)."""
    i = kind_index[item.kind]
    errors[i] += 1
    if item.kind == "bad_file" or logged[i] < _LOGGED_PER_KIND:
        logged[i] += 1
        more = " (further ones are counted, not logged)" if logged[i] == _LOGGED_PER_KIND else ""
        log.warning("%s: skipping %s: %s%s", source, item.where, item.kind, more)


def _arrays(chunk: list[tuple]) -> tuple[np.ndarray, ...]:
    images, texts, counts, labels, ms, states = zip(*chunk, strict=True)
    image_array = np.empty(len(images), dtype=object)
    image_array[:] = images
    text_array = np.empty((len(texts), len(texts[0])), dtype=object)
    text_array[:] = texts
    return (
        image_array,
        text_array,
        np.asarray(counts, np.int32),
        np.asarray(labels, np.int32),
        np.asarray(ms, np.int64),
        np.asarray(states, np.int64),
    )
