"""The tf.data input pipeline: sources -> decode/augment -> batch -> tokenize.

    pipeline = Pipeline("wds:/data/laion/{00000..01023}.tar", training=True, batch_size=256)
    it = pipeline.iterator()                  # host-local numpy batches + get_state()/set_state()
    batch = next(it)  # {"images": float32 [B, 224, 224, 3], "tokens": int32 [B, 77]}

Data streams. The records of every source are split into `num_streams`
disjoint streams (stream s reads every num_streams-th file, or record); each
process reads a contiguous block of them, and each of its batches holds
batch_size / (its streams) consecutive rows from each stream in stream order.
A global batch is therefore the same examples in the same order for any
process count that divides num_streams, and a run can resume on another
number of processes. Each stream's position is saved separately.

Within a stream, records are read and ordered in Python (`producer`), where
every example gets its index and the resume state after it; TensorFlow decodes and
augments in parallel (per-example seeds from the stream index, so results do
not depend on thread timing), batches, and tokenizes each batch with the
configured tokenizer. An image that fails to decode is dropped and counted
without disturbing the stream: each chunk of examples from the producer is
decoded in its own dataset with its own `ignore_errors`, so errors from
anywhere else still stop the run, and the gaps in the example indices count
the failures.

Batches: "images" float32 [B, S, S, 3] normalized (uint8 pixels [B, S, S, 3]
with normalize=False, as training takes them to the devices); "tokens" int32 [B, L]
(text=True; [B, K, L] with "caption_mask" bool [B, K] when num_captions K > 1);
"labels" int32 [B] (labels=True); "mask" bool [B] in evaluation, where the
last batch is padded to B (training drops the remainder instead). With
declip_views (training), DeCLIP's extra views: "images_2" [B, S, S, 3]
as "images", a second random resized crop of the same image, randomly
flipped; "tokens_aug" int32 [B, L], an EDA-augmented copy of the caption in
"tokens" (`eda.augment_caption`). Their seeds are functions of (seed,
stream, example index) like the first crop's.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from clip_jax.data import eda, preprocess
from clip_jax.data.iterator import DataIterator
from clip_jax.data.order import hash64, rng
from clip_jax.data.producer import CAPTION_SEPARATOR, StateLayout, StreamState, initial_state, produce
from clip_jax.data.records import ERROR_KINDS
from clip_jax.data.sources import ReadOptions, make_source
from clip_jax.data.spec import parse_mixture

Tokenizer = Callable[[list[str]], np.ndarray]
STATE_VERSION = 2
# A run of this many images in a row that fail to decode means the data is unusable.
MAX_CONSECUTIVE_DECODE_FAILURES = 10_000
# Salts of DeCLIP's per-stream keys: second crop, its flip, the caption's EDA.
_CROP_2_SALT, _FLIP_SALT, _EDA_SALT = 2, 3, 4
# Producer chunks decoded at once (each with its own parallel map), in stream order.
_CHUNKS_IN_FLIGHT = 2


@dataclasses.dataclass(frozen=True)
class Augment:
    """Image geometry: output size and the training crop's area and aspect ranges."""

    image_size: int = 224
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)


class Pipeline:
    """An input pipeline over one source or a weighted mixture, for one process.

    Args:
      source: a source string, a list of them (equal weights) or of (string, weight) pairs.
      training: shuffle, random crops, one caption sampled per example, full batches only.
      batch_size: examples per batch on this process.
      image_size, crop_scale, crop_ratio: see `Augment`. mean, std: per-channel normalization.
      tokenizer: a spec for `clip_jax.tokenizers.get_tokenizer` ("clip",
        "sentencepiece:/path") or a callable list[str] -> int32 [N, context_length].
      context_length: tokens per caption.
      seed: the data order, crops and caption choices are functions of it.
      process_index, process_count: this process (default: jax's).
      num_streams: disjoint streams the records are split into (default: one
        per process); must be a multiple of process_count. This process reads
        streams [p * S / P, (p + 1) * S / P). Evaluation reads one stream per process.
      image_key, caption_key, label_key: record fields ("a;b" lists alternatives);
        None uses each kind's defaults; a source's `#` options override these.
      text: read captions and emit tokens. labels: read labels and emit them.
      num_captions: captions per example in evaluation (retrieval over COCO's five).
      epochs: passes over the data; None means endless in training, one in evaluation.
      resample: draw shards (or records) with replacement each epoch instead of permuting.
      shuffle_buffer: block size of the block shuffle (records held in memory).
      cycle_length: shards read round-robin at once.
      chunk_size: examples handed from Python to tf.data at a time.
      declip_views: (training, with text) add DeCLIP's second image view
        "images_2" and EDA caption "tokens_aug" to every batch (see the module docstring).
      chain_captions: (training, with text) each row holds all of an example's captions, from the
        sampled one on, as `chained_tokens` joins them (a caption LM's training for LiMBeR).
      normalize: images as float32 model inputs normalized by mean and std; False: as uint8
        pixels, a quarter of the bytes, for a step that normalizes on the device (`clip_jax.inference.images.normalize`).
    """

    def __init__(
        self,
        source: str | Sequence[str | tuple[str, float]],
        *,
        training: bool,
        batch_size: int,
        image_size: int = 224,
        tokenizer: str | Tokenizer = "clip",
        context_length: int = 77,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        num_streams: int | None = None,
        image_key: str | None = None,
        caption_key: str | None = None,
        label_key: str | None = None,
        text: bool = True,
        labels: bool = False,
        num_captions: int = 1,
        epochs: int | None = None,
        resample: bool = False,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: tuple[float, float, float] = preprocess.OPENAI_MEAN,
        std: tuple[float, float, float] = preprocess.OPENAI_STD,
        shuffle_buffer: int = 10_000,
        cycle_length: int = 8,
        chunk_size: int = 64,
        declip_views: bool = False,
        chain_captions: bool = False,
        normalize: bool = True,
    ):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        if training and num_captions != 1:
            raise ValueError("training samples one caption per example: num_captions must be 1")
        if chain_captions and not (training and text):
            raise ValueError("chain_captions joins training captions: needs training=True, text=True")
        if declip_views and not (training and text):
            raise ValueError("declip_views adds training views of images and captions: needs training=True, text=True")
        self.num_streams = num_streams or process_count
        self.streams = local_streams(self.num_streams, process_index, process_count)
        if batch_size % len(self.streams):
            raise ValueError(f"batch_size {batch_size} does not split over this process's {len(self.streams)} data streams")
        if not training and len(self.streams) > 1:
            raise ValueError(f"evaluation reads one stream per process: num_streams {num_streams} != {process_count}")
        _hide_gpus_from_tf()
        mixture = parse_mixture(source)
        self.read = ReadOptions(
            training, seed, self.streams[0], self.num_streams, resample, shuffle_buffer, cycle_length,
            image_key, caption_key, label_key, text, labels,
        )
        self.stream_sources = {
            s: [make_source(spec, i, dataclasses.replace(self.read, stream_index=s)) for i, (spec, _) in enumerate(mixture)]
            for s in self.streams
        }
        self.sources = self.stream_sources[self.streams[0]]
        self.weights = [w for _, w in mixture]
        self.batch_size, self.num_captions, self.chunk_size = batch_size, num_captions, chunk_size
        self.declip_views, self.chain_captions = declip_views, chain_captions
        self.epochs = epochs if epochs is not None or training else 1
        self.augment = Augment(image_size, tuple(crop_scale), tuple(crop_ratio))
        self._normalize = preprocess.Normalizer(mean, std) if normalize else None
        self.layout = StateLayout(tuple(len(c) for c in initial_state(self.sources).cursors))  # the same for every stream
        self.tokenizer: Tokenizer | None = None
        if text:
            if isinstance(tokenizer, str):
                from clip_jax.tokenizers import get_tokenizer

                tokenizer = get_tokenizer(tokenizer, context_length)
            self.tokenizer = tokenizer
        self.context_length = context_length

    # -- state --------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a saved state must match to be restored: everything that fixes the order."""
        r = self.read
        return {
            "sources": [[s.spec.text, w] for s, w in zip(self.sources, self.weights, strict=True)],
            "seed": r.seed,
            "num_streams": self.num_streams,
            "training": r.training,
            "resample": r.resample,
            "shuffle_buffer": r.shuffle_buffer,
            "cycle_length": r.cycle_length,
        }

    def state_dict(self, states: Sequence[StreamState]) -> dict[str, Any]:
        """This process's StreamStates (one per local stream) as a JSON-able dict with the fingerprint."""
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint(),
            "streams": {
                str(s): {
                    "examples": state.m,
                    "skipped": dict(zip(ERROR_KINDS, state.errors, strict=True)),
                    "cursors": [list(c) for c in state.cursors],
                }
                for s, state in zip(self.streams, states, strict=True)
            },
        }

    def parse_state(self, state: dict[str, Any] | None) -> list[StreamState]:
        """The local streams' StreamStates in a dict from `state_dict` (None: the start).

        The dict may hold other streams too (a checkpoint holds all of them);
        its fingerprint must match this pipeline's.
        """
        if state is None:
            return [initial_state(self.stream_sources[s]) for s in self.streams]
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported input pipeline state version {state.get('version')!r}")
        saved, now = state["fingerprint"], self.fingerprint()
        diff = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v}
        if diff:
            raise ValueError(f"input pipeline state was saved with other settings (saved, now): {diff}")
        missing = [s for s in self.streams if str(s) not in state["streams"]]
        if missing:
            raise ValueError(f"input pipeline state has no position for streams {missing} (it has {sorted(state['streams'])})")
        return [_stream_state(state["streams"][str(s)]) for s in self.streams]

    # -- tf.data ------------------------------------------------------------

    def dataset(self, state: dict[str, Any] | None = None) -> tf.data.Dataset:
        """Batches as (batch, meta) pairs, starting after `state` (a dict from `state_dict`).

        meta: "state" int64 [K, D] (for each of the K local streams, its
        StreamState after the batch, see StateLayout) and "decode_failures"
        int64 [K] (images that failed to decode in each stream so far).
        """
        starts = self.parse_state(state)
        branches = [self._stream_dataset(s, start) for s, start in zip(self.streams, starts, strict=True)]
        if len(branches) == 1:
            ds = branches[0].map(lambda batch, meta: (batch, stack_metas([meta])))
        else:
            ds = tf.data.Dataset.zip(tuple(branches)).map(lambda *parts: (
                {k: tf.concat([batch[k] for batch, _ in parts], axis=0) for k in parts[0][0]},
                stack_metas([meta for _, meta in parts]),
            ))
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def _stream_dataset(self, stream_index: int, start: StreamState) -> tf.data.Dataset:
        """One stream's batches of batch_size / K rows as (batch, meta) with meta of that stream alone."""
        sources = self.stream_sources[stream_index]

        def generate():
            return produce(
                sources,
                self.weights,
                seed=self.read.seed,
                stream_index=stream_index,
                epochs=self.epochs,
                training=self.read.training,
                num_captions=self.num_captions,
                start=start,
                chunk_size=self.chunk_size,
                chain_captions=self.chain_captions,
            )

        k = self.num_captions
        signature = (
            tf.TensorSpec([None], tf.string),
            tf.TensorSpec([None, k], tf.string),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int64),
            tf.TensorSpec([None, self.layout.size], tf.int64),
        )
        ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
        ds = ds.map(lambda image, texts, count, label, m, st: dict(
            image=image, texts=texts, count=count, label=label, m=m, state=st))
        ds = ds.interleave(
            lambda chunk: self._decode_chunk(stream_index, chunk),
            cycle_length=_CHUNKS_IN_FLIGHT, block_length=self.chunk_size + 1,
            num_parallel_calls=_CHUNKS_IN_FLIGHT, deterministic=True,
        )
        first = (tf.constant(0, tf.int64), tf.constant(0, tf.int64), tf.constant(start.m, tf.int64))
        ds = ds.scan(first, self._count_failures)
        ds = ds.filter(lambda e: e["ok"])
        ds = ds.batch(self.batch_size // len(self.streams), drop_remainder=self.read.training)
        finish = functools.partial(self._finish_batch, stream_index)
        return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def iterator(self, state: dict[str, Any] | None = None) -> DataIterator:
        """A resumable iterator of host-local numpy batches."""
        return DataIterator(self, state)

    def _decode_chunk(self, stream_index: int, chunk: dict[str, tf.Tensor]) -> tf.data.Dataset:
        """A chunk of examples from the producer [C, ...] -> its decoded examples (ok=True), then a marker.

        An example whose image fails to decode is left out (the chunk's own
        `ignore_errors`, so errors anywhere else still stop the run); the
        marker (ok=False, the chunk's last example index m) lets
        `_count_failures` count the missing ones, at the chunk's end too.
        The random crop's seed is (crop key, m): a function of the seed, the stream and the example.
        With declip_views, "image_2" holds the second view (`_second_view`);
        a failure to decode either view drops the example.
        """
        a = self.augment
        key = tf.constant(_stream_key(self.read.seed, stream_index), tf.int64)

        def decode(e: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            if self.read.training:
                seed = tf.stack([key, e["m"]])
                image = preprocess.random_resized_crop(e["image"], seed, a.image_size, a.crop_scale, a.crop_ratio)
            else:
                image = preprocess.resize_center_crop(e["image"], a.image_size)
            views = {}
            if self.declip_views:
                views["image_2"] = self._second_view(stream_index, e["image"], e["m"])
            return {**e, "image": image, **views, "ok": tf.constant(True)}

        blank_image = tf.zeros([a.image_size] * 2 + [3], tf.uint8)
        views = {"image_2": blank_image} if self.declip_views else {}
        marker = {**{k: v[-1] for k, v in chunk.items()}, "image": blank_image, **views, "ok": tf.constant(False)}
        decoded = tf.data.Dataset.from_tensor_slices(chunk).map(
            decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        ).ignore_errors()
        return decoded.concatenate(tf.data.Dataset.from_tensors(marker))

    def _second_view(self, stream_index: int, data: tf.Tensor, m: tf.Tensor) -> tf.Tensor:
        """DeCLIP's second view of encoded bytes: uint8 pixels [S, S, 3].

        A random resized crop with the first one's ranges and a random
        horizontal flip, each seeded by (its own key of the seed and stream, m).
        The crop decodes the bytes again (JPEGs only inside its window).
        """
        a = self.augment
        crop_key, flip_key = (_stream_key(self.read.seed, stream_index, salt) for salt in (_CROP_2_SALT, _FLIP_SALT))
        image = preprocess.random_resized_crop(
            data, tf.stack([tf.constant(crop_key, tf.int64), m]), a.image_size, a.crop_scale, a.crop_ratio
        )
        return tf.image.stateless_random_flip_left_right(image, tf.stack([tf.constant(flip_key, tf.int64), m]))

    def _count_failures(
        self, counts: tuple[tf.Tensor, tf.Tensor, tf.Tensor], e: dict[str, tf.Tensor]
    ) -> tuple[tuple[tf.Tensor, tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]:
        """Running (total, consecutive, next expected m) decode failures; fails the run on a hopeless streak.

        The examples missing before a decoded one (or up to a chunk's marker) failed to decode.
        """
        total, streak, expected = counts
        ok = tf.cast(e["ok"], tf.int64)
        missing = e["m"] + 1 - ok - expected
        total, streak = total + missing, streak + missing
        sources = ", ".join(s.spec.text for s in self.sources)  # no quotes: TF would escape them
        limit = MAX_CONSECUTIVE_DECODE_FAILURES
        message = f"NoValidDataError: data source(s) {sources}: {limit} images in a row failed to decode"
        check = tf.debugging.Assert(streak < limit, [message])
        with tf.control_dependencies([check]):
            total = tf.identity(total)
        return (total, streak * (1 - ok), e["m"] + 1), {**e, "failures": total}

    def _tokenize(self, texts: np.ndarray) -> np.ndarray:
        strings = [t.decode("utf-8") for t in texts.reshape(-1)]
        if self.chain_captions:
            tokens = [chained_tokens(self.tokenizer, s.split(CAPTION_SEPARATOR), self.context_length) for s in strings]
        else:
            tokens = self.tokenizer(strings)
        return np.asarray(tokens, np.int32).reshape(*texts.shape, self.context_length)

    def _tokenize_with_eda(
        self, stream_index: int, texts: np.ndarray, m: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training captions bytes [B, 1] of examples m int64 [B] -> their tokens [B, 1, L], their EDA's [B, L]."""
        captions = [t.decode("utf-8") for t in texts[:, 0]]
        seed = self.read.seed
        augmented = [augmented_caption(c, seed, stream_index, int(i)) for c, i in zip(captions, m, strict=True)]
        tokens = np.asarray(self.tokenizer(captions + augmented), np.int32)
        return tokens[: len(captions), None], tokens[len(captions) :]

    def _finish_batch(
        self, stream_index: int, e: dict[str, tf.Tensor]
    ) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
        """Tokenizes, pads evaluation batches to full size, and splits off the resume metadata."""
        batch = {"images": e["image"]}  # uint8 pixels; normalized below (if asked), at the final batch shape
        if self.tokenizer is not None:
            if self.declip_views:
                tokens, tokens_aug = tf.numpy_function(
                    functools.partial(self._tokenize_with_eda, stream_index), [e["texts"], e["m"]],
                    (tf.int32, tf.int32), stateful=False,
                )
                batch["tokens_aug"] = tf.ensure_shape(tokens_aug, [None, self.context_length])
            else:
                tokens = tf.numpy_function(self._tokenize, [e["texts"]], tf.int32, stateful=False)
            tokens = tf.ensure_shape(tokens, [None, self.num_captions, self.context_length])
            if self.num_captions == 1:
                batch["tokens"] = tokens[:, 0]
            else:
                batch["tokens"] = tokens
                batch["caption_mask"] = tf.range(self.num_captions)[None, :] < e["count"][:, None]
        if self.read.labels:
            batch["labels"] = e["label"]
        meta = {"state": e["state"][-1], "decode_failures": e["failures"][-1]}
        if not self.read.training:
            n = tf.shape(e["image"])[0]
            batch["mask"] = tf.ones([n], tf.bool)
            batch = {k: _pad(v, self.batch_size // len(self.streams)) for k, v in batch.items()}
        if self.declip_views:
            batch["images_2"] = e["image_2"]
        if self._normalize is not None:
            batch = {k: self._normalize(v) if k.startswith("images") else v for k, v in batch.items()}
        return batch, meta


def chained_tokens(tokenizer: Tokenizer, captions: Sequence[str], context_length: int) -> np.ndarray:
    """One row int32 [context_length] of several captions: start, ids of the first, start, ids of the next,
    ..., end, then zeros; cut to the context with the end token last, as the tokenizer cuts one caption.

    A caption LM trained on such rows learns that a text's later captions name what its first did: the
    in-context reading that lets a frozen LM take an image prefix in its place (LiMBeR).
    """
    ids = [tokenizer.sot_token_id]
    for caption in captions:
        ids += [*tokenizer.encode(caption), tokenizer.sot_token_id]
    ids = ids[:context_length]
    ids[-1] = tokenizer.eot_token_id
    return np.pad(np.asarray(ids, np.int32), (0, context_length - len(ids)))


def augmented_caption(caption: str, seed: int, stream_index: int, m: int) -> str:
    """Example m's caption in a stream as "tokens_aug" holds it: `eda.augment_caption` seeded by (seed, stream, m)."""
    return eda.augment_caption(caption, rng(seed, stream_index, _EDA_SALT, m), eda.load_synonyms())


def _stream_key(seed: int, stream_index: int, *salt: int) -> int:
    """A non-negative int64 key of (seed, stream, salt) for per-example TF seeds (key, m)."""
    return hash64(seed, stream_index, *salt) >> 1


def stack_metas(metas: Sequence[dict[str, tf.Tensor]]) -> dict[str, tf.Tensor]:
    """Per-stream metadata stacked along a new leading axis [K, ...]."""
    return {key: tf.stack([meta[key] for meta in metas]) for key in metas[0]}


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One state holding every stream of per-process states from `get_state()` (what a checkpoint saves)."""
    first = states[0]
    for other in states[1:]:
        if (other["version"], other["fingerprint"]) != (first["version"], first["fingerprint"]):
            raise ValueError("input pipeline states of different settings cannot be merged")
    streams = {k: v for state in states for k, v in state["streams"].items()}
    return {**first, "streams": dict(sorted(streams.items(), key=lambda item: int(item[0])))}


def local_streams(num_streams: int, process_index: int, process_count: int) -> list[int]:
    """The streams process p of P reads: [p * S / P, (p + 1) * S / P)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} out of range for {process_count} processes")
    if num_streams % process_count:
        raise ValueError(
            f"num_streams {num_streams} is not a multiple of the {process_count} processes: every process "
            "reads an equal block of the data streams"
        )
    per_process = num_streams // process_count
    return list(range(process_index * per_process, (process_index + 1) * per_process))


def _stream_state(saved: dict[str, Any]) -> StreamState:
    errors = tuple(int(saved["skipped"].get(k, 0)) for k in ERROR_KINDS)
    return StreamState(int(saved["examples"]), errors, tuple(tuple(c) for c in saved["cursors"]))


def _pad(x: tf.Tensor, size: int) -> tf.Tensor:
    """Pads the leading axis with zeros (False) up to `size`."""
    pad = size - tf.shape(x)[0]
    padded = tf.pad(x, [[0, pad]] + [[0, 0]] * (x.shape.rank - 1))
    padded.set_shape([size, *x.shape[1:]])
    return padded


def _hide_gpus_from_tf() -> None:
    """Keeps TensorFlow off the accelerators JAX uses (no-op once TF has initialized them)."""
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")


def make_dataset(source: str | Sequence[str | tuple[str, float]], **kwargs: Any) -> tf.data.Dataset:
    """Batches as dicts (see the module docstring) without resume metadata; kwargs as for Pipeline."""
    return Pipeline(source, **kwargs).dataset().map(lambda batch, meta: batch)


def make_iterator(
    source: str | Sequence[str | tuple[str, float]], state: dict[str, Any] | None = None, **kwargs: Any
) -> DataIterator:
    """A resumable iterator of numpy batches; kwargs as for Pipeline."""
    return Pipeline(source, **kwargs).iterator(state)
