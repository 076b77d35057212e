"""Evaluations inside the train loop, each process decoding only its share of an eval set.

    tasks = [EvalTask(name, spec) for name, spec in config.evals.items()]
    encoders = make_eval_encoders(model, config, batch_sharding)  # a CLIP's towers or a LiMBeR captioner
    metrics = run_evals(tasks, step, config, image_size, variables, encoders)  # {"<name>/<metric>": value}

Each process reads its share of the eval records (the sources split them by
process_index / process_count) in local batches of b = B / process_count rows,
the last one padded and masked. The processes encode in lockstep: every call
takes one global batch [B, ...] assembled from the local ones over the batch
sharding, and also returns whether any process has another batch, so they
agree on the number of calls without an extra round trip; a process whose
share ran out feeds fully masked blanks meanwhile. Each process keeps the
embeddings of its own rows; after the last call they are gathered once,
padding rows dropped, and sorted into a canonical order (by their bytes) that
does not depend on how the records were split. Every process then computes
the metrics of the whole set with `evaluation.run_eval`, given the embeddings
as batches and identity encoders.

LiMBeR's 'captioning' eval goes the same way with a captioner (make_captioner)
in place of the towers: each process captions its share, the generated ids
and the reference caption rows are gathered, and every process scores them
(evaluation.caption_eval).

Why the metrics equal a one-process run's exactly: a record's embedding does
not depend on the process or device that encodes it (every device runs the
same program on rows of the same shapes), and after the canonical sort the
metric functions see the same arrays in the same order, whatever the split.
The sort only matters where order does: the linear probe's validation split
and sums, and the order of scores inside the ranking matmuls.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from clip_jax import data
from clip_jax.evaluation.batching import Encoder, pad_rows
from clip_jax.evaluation.benchmarks import benchmark, find_benchmark
from clip_jax.evaluation.caption_eval import caption_eval_metrics
from clip_jax.evaluation.evaluator import run_eval
from clip_jax.evaluation.progress import Progress
from clip_jax.models import CLIP
from clip_jax.models.limber import Limber, caption
from clip_jax.tokenizers import get_tokenizer

log = logging.getLogger("clip_jax.evaluation")

Batch = dict[str, np.ndarray]
# Fields of a pipeline batch that go with the embeddings into the metrics.
_ROW_FIELDS = ("labels", "caption_mask", "mask")


@dataclasses.dataclass(frozen=True)
class Encoders:
    """The model's towers jitted for the mesh, compiled once per batch shape and reused by every eval.

    embed: (variables, global batch {"images" [B, H, W, 3], optionally
      "tokens" [B, K, L], "more" bool [B]}) -> ({"images" [B, E], "tokens"
      [B, K, E] where given}, any("more")), the embeddings split like the batch.
      A captioner's (make_captioner) reads only the images and returns {"captions" [B, T]}.
    encode_text: (variables, tokens [B, L] split over the batch axes) -> [B, E] on every process (None: a captioner).
    inputs: the batch fields embed reads; the caption rows ("tokens") travel with the outputs when not one.
    """

    embed: Callable[..., tuple[dict[str, jax.Array], jax.Array]]
    encode_text: Callable[..., jax.Array] | None
    batch_sharding: NamedSharding
    inputs: tuple[str, ...] = ("images", "tokens")

    @property
    def shards(self) -> int:
        """Devices the batch axis is split over (the mesh's batch axes)."""
        axes = self.batch_sharding.spec[0] or ()
        return math.prod(self.batch_sharding.mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))


def make_encoders(model: CLIP, batch_sharding: NamedSharding) -> Encoders:
    """Encoders for run_evals over the mesh of `batch_sharding` (leading axis split over the batch axes)."""
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())

    def embed(variables: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], jax.Array]:
        out = {"images": model.apply(variables, batch["images"], method=model.encode_image)}
        if "tokens" in batch:
            tokens = batch["tokens"]
            flat = model.apply(variables, tokens.reshape(-1, tokens.shape[-1]), method=model.encode_text)
            out["tokens"] = flat.reshape(*tokens.shape[:-1], -1)
        return out, jnp.any(batch["more"])

    def encode_text(variables: dict[str, Any], tokens: jax.Array) -> jax.Array:
        return model.apply(variables, tokens, method=model.encode_text)

    return Encoders(
        jax.jit(embed, out_shardings=(batch_sharding, replicated)),
        jax.jit(encode_text, out_shardings=replicated),
        batch_sharding,
    )


def make_captioner(model: Limber, batch_sharding: NamedSharding, start_id: int, eos_id: int, max_new_tokens: int) -> Encoders:
    """Encoders whose embed is greedy captioning: {"images" [B, H, W, 3]} -> {"captions" int32 [B, max_new_tokens]}.

    The prompt is the image prefix and `start_id`; after `eos_id` a row holds padding (0).
    """
    replicated = NamedSharding(batch_sharding.mesh, PartitionSpec())

    def embed(variables: dict[str, Any], batch: dict[str, jax.Array]) -> tuple[dict[str, jax.Array], jax.Array]:
        tokens = caption(model, variables, batch["images"], start_id=start_id, max_new_tokens=max_new_tokens, eos_id=eos_id)
        return {"captions": tokens}, jnp.any(batch["more"])

    return Encoders(jax.jit(embed, out_shardings=(batch_sharding, replicated)), None, batch_sharding, inputs=("images",))


def make_eval_encoders(model: CLIP | Limber, config: ml_collections.ConfigDict, batch_sharding: NamedSharding) -> Encoders:
    """The train loop's encoders: a CLIP's towers, or a LiMBeR model's captioner (captions up to the context length)."""
    if not isinstance(model, Limber):
        return make_encoders(model, batch_sharding)
    tokenizer = get_tokenizer(config.data.tokenizer, config.data.context_length)
    return make_captioner(
        model, batch_sharding, tokenizer.sot_token_id, tokenizer.eot_token_id, config.data.context_length - 1
    )


def local_batch_size(batch_size: int, shards: int, process_count: int) -> int:
    """Rows per process of the smallest global batch >= batch_size that splits evenly over `shards` devices."""
    if shards % process_count:
        raise ValueError(f"the batch axes' {shards} devices do not split evenly over {process_count} processes")
    return -(-batch_size // shards) * shards // process_count


def image_rows(batch: Batch) -> Batch:
    """A pipeline batch with captions as tokens [b, K, L] and "caption_mask" [b, K] (K = 1 when given [b, L])."""
    if "tokens" not in batch or batch["tokens"].ndim == 3:
        return batch
    return {**batch, "tokens": batch["tokens"][:, None], "caption_mask": np.ones((len(batch["tokens"]), 1), bool)}


def lockstep(batches: Iterable[Batch]) -> Iterator[tuple[Batch, bool]]:
    """(batch, whether another follows) for this process's batches, then fully masked blanks forever.

    Every process calls the encoder once per item, so each must keep going
    (with blanks) until all are done.
    """
    batches = iter(batches)
    current = next(batches, None)
    if current is None:
        raise ValueError("Got no batches: every process needs at least one record of the eval set")
    for following in batches:
        yield current, True
        current = following
    yield current, False
    yield from itertools.repeat(({k: np.zeros_like(v) for k, v in current.items()}, False))


def canonical_order(rows: Batch) -> np.ndarray:
    """The permutation int [N] that sorts rows (dict of [N, ...] arrays) by their bytes, all fields together.

    The same rows in any order come out in the same order (rows equal in every
    field are interchangeable), so the metrics do not depend on how the
    records were split between processes.
    """
    count = len(next(iter(rows.values())))
    as_bytes = [
        np.ascontiguousarray(rows[k]).reshape(count, math.prod(rows[k].shape[1:])).view(np.uint8) for k in sorted(rows)
    ]
    keys = np.ascontiguousarray(np.concatenate(as_bytes, axis=1))
    return np.argsort(keys.view(np.dtype((np.void, keys.shape[1]))).ravel(), kind="stable")


def embed_shares(
    encoders: Encoders, variables: dict[str, Any], batches: Iterable[Batch], progress: Progress | None = None
) -> Batch:
    """Embeds every process's share of an eval set in lockstep; all rows on every process.

    batches: this process's pipeline batches, each [b, ...] with "mask" [b]
      (b * process_count rows must split over the batch shards).
    progress: told the rows done (this process's times the process count) and, at the end, the exact total.

    Returns:
      one batch of the whole set without padding, in canonical order:
      "images" [N, E] image embeddings; with captions "tokens" [N, K, E]
      caption embeddings and "caption_mask" [N, K]; "labels" [N] where given.
      A captioner's: "captions" [N, T] and the caption rows "tokens" [N, K, L] instead of the embeddings.
    """
    sharding = encoders.batch_sharding
    kept = _ROW_FIELDS + tuple(k for k in ("tokens",) if k not in encoders.inputs)
    local: list[Batch] = []
    for batch, more in lockstep(image_rows(b) for b in batches):
        inputs = {k: batch[k] for k in encoders.inputs if k in batch}
        inputs["more"] = np.full(len(batch["mask"]), more)
        embeds, anyone_more = encoders.embed(variables, data.make_global_batch(inputs, sharding))
        embeds = multihost_utils.global_array_to_host_local_array(embeds, sharding.mesh, sharding.spec)
        local.append({**{k: batch[k] for k in kept if k in batch}, **jax.tree.map(np.asarray, embeds)})
        if progress is not None:
            progress.update(int(batch["mask"].sum()) * jax.process_count())
        if not anyone_more:
            break
    rows = multihost_utils.process_allgather({k: np.concatenate([b[k] for b in local]) for k in local[0]}, tiled=True)
    mask = rows.pop("mask")
    rows = {k: v[mask] for k, v in rows.items()}
    if progress is not None:
        progress.close(done=int(mask.sum()))
    order = canonical_order(rows)
    return {k: v[order] for k, v in rows.items()}


def prompt_encoder(encoders: Encoders, variables: dict[str, Any]) -> Encoder:
    """encode_text for tokens that are the same on every process (zero-shot prompts): [n, L] -> numpy [n, E].

    The rows are padded to a multiple of the batch shards and split over the devices.
    """

    def encode(tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        padded = pad_rows(tokens, -(-len(tokens) // encoders.shards) * encoders.shards)
        global_tokens = jax.make_array_from_callback(padded.shape, encoders.batch_sharding, lambda i: padded[i])
        return np.asarray(encoders.encode_text(variables, global_tokens))[: len(tokens)]

    return encode


def _embedded(rows: np.ndarray) -> np.ndarray:
    """The encoder of rows that are embeddings already."""
    return rows


def zeroshot_texts(spec: ml_collections.ConfigDict) -> tuple[Any, Any]:
    """A zero-shot spec's (classnames, templates); each one not given comes from the shipped metadata of
    its data source where there is some (evaluation.benchmarks), e.g. for data="tfds:cifar10:test"."""
    classnames, templates = spec.get("classnames"), spec.get("templates")
    if spec.type != "zeroshot" or (classnames and templates):
        return classnames, templates
    known = find_benchmark(spec.data) if classnames else benchmark(spec.data)  # no class names: must be known
    if known is None:
        return classnames, templates
    return classnames or known.classnames, templates or known.templates


@dataclasses.dataclass
class EvalTask:
    """One entry of config.evals with what it needs to run; `skipped`: an optional eval whose data is missing."""

    name: str
    spec: ml_collections.ConfigDict
    skipped: bool = False

    def pipeline(
        self, config: ml_collections.ConfigDict, image_size: int, source: str, labels: bool, batch_size: int
    ) -> data.Pipeline:
        """This process's share of `source`, in batches of `batch_size` rows (the last one padded and masked)."""
        return data.Pipeline(
            source,
            training=False,
            batch_size=batch_size,
            image_size=image_size,
            tokenizer=config.data.tokenizer,
            context_length=config.data.context_length,
            labels=labels,
            text=self.spec.type in ("retrieval", "captioning"),
            num_captions=self.spec.get("num_captions", 1),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def evaluate(
        self, config: ml_collections.ConfigDict, image_size: int, variables: dict[str, Any], encoders: Encoders,
        progress: bool = False,
    ) -> dict[str, float]:
        """The task's metrics over its whole eval set; every process must call it, and all get the same.

        progress: process 0 shows a progress line per data source on stderr.
        """
        spec = self.spec
        batch_size = local_batch_size(spec.get("batch_size", 256), encoders.shards, jax.process_count())

        def embedded(source: str, labels: bool) -> list[Batch]:
            batches = self.pipeline(config, image_size, source, labels, batch_size).iterator()
            name = self.name if source == spec.data else f"{self.name} ({source})"
            shown = Progress(name, data.num_records(source)) if progress and jax.process_index() == 0 else None
            return [embed_shares(encoders, variables, batches, shown)]

        classnames, templates = zeroshot_texts(spec)
        tokenizer = get_tokenizer(config.data.tokenizer, config.data.context_length)
        if spec.type == "captioning":
            (rows,) = embedded(spec.data, labels=bool(classnames))
            return caption_eval_metrics(
                rows["captions"], rows["tokens"], rows["caption_mask"], tokenizer, rows.get("labels"), classnames
            )
        return run_eval(
            spec.type,
            encode_image=_embedded,
            encode_text=_embedded if spec.type == "retrieval" else prompt_encoder(encoders, variables),
            tokenizer=tokenizer,
            batches=embedded(spec.data, labels=spec.type != "retrieval"),
            classnames=classnames,
            templates=templates,
            train_batches=embedded(spec.train_data, labels=True) if spec.type == "linear_probe" else None,
            val_batches=(
                embedded(spec.val_data, labels=True) if spec.type == "linear_probe" and spec.get("val_data") else None
            ),
        )


def run_evals(
    tasks: list[EvalTask], step: int, config: ml_collections.ConfigDict, image_size: int, variables: dict[str, Any],
    encoders: Encoders, force: bool = False,
) -> dict[str, float]:
    """Runs the evals due at `step` (all of them when `force`) on every process; metrics as '<name>/<metric>'.

    An eval with `optional=True` whose data is missing (a TFDS dataset not prepared, files not there) is
    skipped with one warning and not tried again in this run; any other eval's missing data raises.
    """
    results: dict[str, float] = {}
    for task in tasks:
        if task.skipped or (not force and step % task.spec.every_steps):
            continue
        start = time.perf_counter()
        try:
            metrics = task.evaluate(config, image_size, variables, encoders)
        except FileNotFoundError as error:  # data.DatasetNotFoundError too: raised on all processes as data opens
            if not task.spec.get("optional", False):
                raise
            task.skipped = True
            log.warning("optional eval %s skipped for the rest of the run: %s", task.name, error)
            continue
        results.update({f"{task.name}/{k}": v for k, v in metrics.items()})
        log.info("eval %s at step %d: %s (%.1f s)", task.name, step, metrics, time.perf_counter() - start)
    return results
