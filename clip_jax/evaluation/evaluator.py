"""Runs encoders over iterables of numpy batch dicts and dispatches to the evaluations.

Batches are dicts of numpy arrays with a leading batch axis B:
  "images" float32 [B, H, W, 3], "tokens" int32 [B, L], "labels" int [B],
  "image_ids" [B] (retrieval: the image of each caption row, ints or strings),
  and optionally "mask" bool [B], False on padding rows (of a final partial
  batch), which are dropped. Encoders always see B rows (see BatchedEncoder).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from clip_jax.evaluation.batching import BatchedEncoder, Encoder
from clip_jax.evaluation.linear_probe import linear_probe
from clip_jax.evaluation.retrieval import retrieval_metrics
from clip_jax.evaluation.templates import DEFAULT_TEMPLATES, get_templates
from clip_jax.evaluation.zeroshot import Tokenizer, zeroshot_classifier, zeroshot_metrics

Batch = Mapping[str, np.ndarray]

EVAL_TYPES = ("zeroshot", "retrieval", "linear_probe")


def embed_images(encode_image: Encoder, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray | None]:
    """encode_image over the "images" of every batch: (float32 [N, E], "labels" [N] or None)."""
    return _embed(encode_image, batches, "images")


def embed_texts(encode_text: Encoder, batches: Iterable[Batch]) -> tuple[np.ndarray, np.ndarray | None]:
    """encode_text over the "tokens" of every batch: (float32 [N, E], "labels" [N] or None)."""
    return _embed(encode_text, batches, "tokens")


def embed_retrieval(
    encode_image: Encoder, encode_text: Encoder, batches: Iterable[Batch]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images and their captions -> embeddings, each image encoded once.

    Batches come in either layout:
      caption rows: "images", "tokens" [B, L], "image_ids" [B] (the image of
        each caption; repeated ids are encoded once);
      image rows (the input pipeline's, num_captions=K): "images", "tokens"
        [B, K, L], "caption_mask" [B, K] (which of the K captions exist).

    Returns:
      image embeddings float32 [Ni, E] in order of first appearance, caption
      embeddings float32 [Nt, E], and text_to_image int [Nt] indexing the first.
    """
    batch_size, batches = _first_batch_size(batches, ("images", "tokens"))
    images, texts = BatchedEncoder(encode_image, batch_size), BatchedEncoder(encode_text, batch_size)
    image_index: dict[object, int] = {}
    text_to_image: list[int] = []
    for batch in batches:
        keep = _valid_rows(batch)
        batch_images, tokens = np.asarray(batch["images"])[keep], np.asarray(batch["tokens"])[keep]
        if tokens.ndim == 3:
            _require(batch, ("images", "tokens", "caption_mask"))
            captions = np.asarray(batch["caption_mask"], bool)[keep]
            first = len(image_index)
            image_index.update((("row", first + i), first + i) for i in range(len(batch_images)))
            images.add(batch_images)
            texts.add(tokens[captions])
            text_to_image.extend(np.repeat(np.arange(first, first + len(batch_images)), captions.sum(axis=1)).tolist())
            continue
        _require(batch, ("images", "tokens", "image_ids"))
        texts.add(tokens)
        is_new = []
        for image_id in np.asarray(batch["image_ids"])[keep].tolist():
            is_new.append(image_id not in image_index)
            text_to_image.append(image_index.setdefault(image_id, len(image_index)))
        images.add(batch_images[np.asarray(is_new, bool)])
    return images.result(), texts.result(), np.asarray(text_to_image)


def run_eval(
    eval_type: str,
    *,
    encode_image: Encoder,
    encode_text: Encoder,
    tokenizer: Tokenizer,
    batches: Iterable[Batch],
    classnames: Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    train_batches: Iterable[Batch] | None = None,
    val_batches: Iterable[Batch] | None = None,
) -> dict[str, float]:
    """One evaluation of a model given as its two encoders; metric name -> value.

    eval_type:
      'zeroshot': batches of "images" and "labels"; needs classnames;
        templates is a set name or a list (default "openai_imagenet").
        -> top1, top5, mean_per_class_recall.
      'retrieval': caption rows ("images", "tokens", "image_ids") or image rows
        ("images", "tokens" [B, K, L], "caption_mask"); see embed_retrieval.
        -> i2t_R@{1,5,10}, t2i_R@{1,5,10}.
      'linear_probe': train_batches and batches of "images" and "labels",
        optionally val_batches (else a seeded 20% of the train rows) to choose
        the L2 strength by CLIP's search; refitted on train + val and scored
        on batches (see linear_probe). -> top1, val_top1, l2.
    """
    if eval_type == "zeroshot":
        if not classnames:
            raise ValueError("A 'zeroshot' eval needs classnames")
        embeds, labels = embed_images(encode_image, batches)
        labels = _labels(labels, eval_type)
        classifier = zeroshot_classifier(
            encode_text, tokenizer, classnames, get_templates(DEFAULT_TEMPLATES if templates is None else templates)
        )
        return zeroshot_metrics(embeds, labels, classifier)
    if eval_type == "retrieval":
        return retrieval_metrics(*embed_retrieval(encode_image, encode_text, batches))
    if eval_type == "linear_probe":
        if train_batches is None:
            raise ValueError("A 'linear_probe' eval needs train_batches")
        train_embeds, train_labels = embed_images(encode_image, train_batches)
        test_embeds, test_labels = embed_images(encode_image, batches)
        val_embeds, val_labels = embed_images(encode_image, val_batches) if val_batches is not None else (None, None)
        return linear_probe(
            train_embeds, _labels(train_labels, eval_type), test_embeds, _labels(test_labels, eval_type),
            val_features=val_embeds, val_labels=None if val_embeds is None else _labels(val_labels, eval_type),
        )
    raise ValueError(f"Unknown eval type {eval_type!r}: expected one of {EVAL_TYPES}")


def _embed(encode: Encoder, batches: Iterable[Batch], field: str) -> tuple[np.ndarray, np.ndarray | None]:
    batch_size, batches = _first_batch_size(batches, (field,))
    encoder = BatchedEncoder(encode, batch_size)
    labels, num_batches = [], 0
    for batch in batches:
        _require(batch, (field,))
        keep = _valid_rows(batch)
        encoder.add(np.asarray(batch[field])[keep])
        if "labels" in batch:
            labels.append(np.asarray(batch["labels"])[keep])
        num_batches += 1
    if labels and len(labels) != num_batches:
        raise ValueError(f"'labels' is in {len(labels)} of {num_batches} batches; it must be in all or none")
    return encoder.result(), (np.concatenate(labels) if labels else None)


def _first_batch_size(batches: Iterable[Batch], fields: Sequence[str]) -> tuple[int, Iterator[Batch]]:
    """The batch size B (rows of the first batch, padding included) and all batches again."""
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("Got no batches")
    _require(first, fields)
    return len(first[fields[0]]), itertools.chain([first], iterator)


def _require(batch: Batch, fields: Sequence[str]) -> None:
    missing = [field for field in fields if field not in batch]
    if missing:
        raise ValueError(f"Batch lacks field(s) {missing}: it has {sorted(batch)}, needs {list(fields)}")


def _valid_rows(batch: Batch) -> np.ndarray | slice:
    """Index of the rows to keep: where "mask" is True, or all rows."""
    return np.asarray(batch["mask"], bool) if "mask" in batch else slice(None)


def _labels(labels: np.ndarray | None, eval_type: str) -> np.ndarray:
    if labels is None:
        raise ValueError(f"A {eval_type!r} eval needs a 'labels' field in its batches")
    return labels
