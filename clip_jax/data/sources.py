"""Sources by kind: each turns a source string into a seeded, restartable stream of Items.

A source yields (item, cursor) pairs; the cursor is a fixed-length tuple of
ints, `(epoch, *position within the epoch)`, and `stream(source, cursor)`
restarts right after the record that produced it. Three shapes of source:

- shards (wds, tfrecord): this process's files in a seeded order per epoch
  (or drawn with replacement when resampling), read round-robin
  `cycle_length` at a time, then block-shuffled (see `order`).
- indexed (csv, shapes): records addressed by index, a full seeded
  permutation per epoch.
- tfds: TFDS's own seeded file shuffling, then block-shuffled.

Evaluation (training=False) reads in a fixed order without shuffling.
"""
from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Sequence

from clip_jax.data import csvfile, shapes, tfds_source, tfrecord, wds
from clip_jax.data.order import Cursor, block_shuffle, epoch_order, round_robin, round_robin_start
from clip_jax.data.records import Example, Fields, Item, NoValidDataError, split_alternatives
from clip_jax.data.spec import SourceSpec, list_files, parse_source


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """How every source of a pipeline reads. Keys of None fall back to each kind's defaults."""

    training: bool
    seed: int
    stream_index: int  # this stream's share of the records: every num_streams-th file (or record)
    num_streams: int
    resample: bool = False
    shuffle_buffer: int = 10_000
    cycle_length: int = 8
    image_key: str | None = None
    caption_key: str | None = None
    label_key: str | None = None
    text: bool = True
    labels: bool = False


class Source(abc.ABC):
    """A deterministic stream of Items per epoch, restartable from a within-epoch cursor."""

    def __init__(self, spec: SourceSpec):
        self.spec = spec

    @abc.abstractmethod
    def start(self) -> Cursor:
        """The within-epoch cursor before an epoch's first record."""

    @abc.abstractmethod
    def epoch(self, epoch: int, cursor: Cursor) -> Iterator[tuple[Item, Cursor]]:
        """Items of `epoch` after `cursor`, each with the within-epoch cursor after it."""


class IndexSource(Source):
    """Records addressed by index (CSV rows, shapes samples); a permutation per epoch."""

    def __init__(
        self, spec: SourceSpec, count: int, get: Callable[[int], Item], opts: ReadOptions, key: Sequence[int]
    ):
        super().__init__(spec)
        self._local = range(opts.stream_index, count, opts.num_streams)
        self._get, self._opts, self._key = get, opts, tuple(key)

    def start(self) -> Cursor:
        return (0,)

    def epoch(self, epoch: int, cursor: Cursor) -> Iterator[tuple[Item, Cursor]]:
        opts = self._opts
        order = epoch_order(len(self._local), epoch, self._key, shuffle=opts.training, resample=opts.resample)
        for pos in range(cursor[0], len(order)):
            yield self._get(self._local[int(order[pos])]), (pos + 1,)


class ShardSource(Source):
    """Files of records (tar shards, TFRecords) read round-robin, then block-shuffled.

    With at least as many files as streams each stream reads its own files;
    with fewer, every stream reads every file and keeps every num_streams-th
    record.
    """

    def __init__(
        self,
        spec: SourceSpec,
        files: list[str],
        read: Callable[[str, Callable[[int], bool]], Iterator[Item]],
        opts: ReadOptions,
        key: Sequence[int],
    ):
        super().__init__(spec)
        pi, pc = opts.stream_index, opts.num_streams
        self._shared = len(files) < pc
        self._files = list(enumerate(files)) if self._shared else list(enumerate(files))[pi::pc]
        self._read, self._opts, self._key = read, opts, tuple(key)

    def start(self) -> Cursor:
        return (*round_robin_start(self._opts.cycle_length), 0, 0)

    def _open(self, file: tuple[int, str]) -> Iterator[Item]:
        file_id, path = file
        pi, pc = self._opts.stream_index, self._opts.num_streams
        keep = (lambda i: (i + file_id) % pc == pi) if self._shared else (lambda i: True)
        return self._read(path, keep)

    def epoch(self, epoch: int, cursor: Cursor) -> Iterator[tuple[Item, Cursor]]:
        opts = self._opts
        order = epoch_order(len(self._files), epoch, (*self._key, 0), shuffle=opts.training, resample=opts.resample)
        files = [self._files[i] for i in order]
        inner = functools.partial(round_robin, files, self._open, opts.cycle_length)
        block = opts.shuffle_buffer if opts.training else 1
        return block_shuffle(inner, cursor, block, (*self._key, 1, epoch))


class TfdsSource(Source):
    """A TFDS split; cursor (records read, block, offset)."""

    def __init__(self, spec: SourceSpec, reader: tfds_source.TfdsReader, opts: ReadOptions, key: Sequence[int]):
        super().__init__(spec)
        self._reader, self._opts, self._key = reader, opts, tuple(key)

    def start(self) -> Cursor:
        return (0, 0, 0)

    def _records(self, epoch: int, cursor: Cursor) -> Iterator[tuple[Item, Cursor]]:
        for n, item in enumerate(self._reader.read(epoch, cursor[0]), cursor[0] + 1):
            yield item, (n,)

    def epoch(self, epoch: int, cursor: Cursor) -> Iterator[tuple[Item, Cursor]]:
        block = self._opts.shuffle_buffer if self._opts.training else 1
        return block_shuffle(functools.partial(self._records, epoch), cursor, block, (*self._key, 1, epoch))


def _fields(spec: SourceSpec, defaults: dict[str, str], opts: ReadOptions) -> Fields:
    """Field names: the source's # options, else the pipeline's keys, else the kind's defaults."""

    def pick(name: str) -> tuple[str, ...]:
        return split_alternatives(spec.options.get(name) or getattr(opts, name) or defaults[name])

    caption = pick("caption_key") if opts.text else None
    return Fields(pick("image_key"), caption, pick("label_key") if opts.labels else None)


def make_source(spec: SourceSpec, index: int, opts: ReadOptions) -> Source:
    """Builds the source for one parsed source string; `index` is its place in the mixture."""
    key = (opts.seed, index, opts.stream_index)
    if spec.kind in ("wds", "tfrecord"):
        module = wds if spec.kind == "wds" else tfrecord
        fields = _fields(spec, module.DEFAULT_FIELDS, opts)
        read_file = module.read_shard if spec.kind == "wds" else module.read_file
        return ShardSource(spec, list_files(spec), lambda path, keep: read_file(path, fields, keep), opts, key)
    if spec.kind == "csv":
        fields = _fields(spec, csvfile.DEFAULT_FIELDS, opts)
        rows = csvfile.load_rows(spec, fields)
        base = os.path.dirname(spec.target)

        def get_row(i: int) -> Item:
            return csvfile.row_item(rows[i], base, fields, f"{spec.target}:{i + 2}")

        return IndexSource(spec, len(rows), get_row, opts, key)
    if spec.kind == "tfds":
        reader = tfds_source.TfdsReader(
            spec.target,
            spec.split or "train",
            _fields(spec, tfds_source.DEFAULT_FIELDS, opts),
            data_dir=spec.options.get("data_dir"),
            shuffle=opts.training,
            seed=opts.seed,
            process_index=opts.stream_index,
            process_count=opts.num_streams,
            source_text=spec.text,
        )
        return TfdsSource(spec, reader, opts, key)
    config = shapes.ShapesConfig.from_spec(spec)
    return IndexSource(spec, config.n, functools.partial(shapes.example, config), opts, key)


def num_records(text: str) -> int | None:
    """How many records one source string holds: CSV rows, a TFDS split, shapes' n; None for shards or unknown.

    For progress lines only: nothing is decoded, and a source that cannot be
    opened gives None (reading it raises the error that names the problem).
    """
    spec = parse_source(text)
    try:
        if spec.kind == "csv":
            opts = ReadOptions(training=False, seed=0, stream_index=0, num_streams=1)
            return len(csvfile.load_rows(spec, _fields(spec, csvfile.DEFAULT_FIELDS, opts)))
        if spec.kind == "tfds":
            return tfds_source.split_size(spec.target, spec.split or "train", spec.options.get("data_dir"))
        if spec.kind == "shapes":
            return shapes.ShapesConfig.from_spec(spec).n
    except (OSError, ValueError):
        return None
    return None


def stream(source: Source, cursor: Cursor | None, epochs: int | None) -> Iterator[tuple[Item, Cursor]]:
    """Items across epochs with full cursors (epoch, *within); stops after `epochs` if given.

    Raises NoValidDataError, naming the source, when an epoch read from its
    start yields no usable record.
    """
    epoch, within = (cursor[0], tuple(cursor[1:])) if cursor else (0, source.start())
    while epochs is None or epoch < epochs:
        fresh, valid, skipped = within == source.start(), 0, collections.Counter()
        for item, after in source.epoch(epoch, within):
            if isinstance(item, Example):
                valid += 1
            else:
                skipped[item.kind] += 1
            yield item, (epoch, *after)
        if fresh and valid == 0:
            raise NoValidDataError(
                f"data source {source.spec.text!r} has no valid example in epoch {epoch}"
                f" (skipped: {dict(skipped) or 'nothing to read'})"
            )
        epoch, within = epoch + 1, source.start()
