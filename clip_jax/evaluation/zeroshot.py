"""Zero-shot classification: class embeddings from prompt templates, then top-k accuracy."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.evaluation.batching import BatchedEncoder, Encoder
from clip_jax.evaluation.ranking import check_indices, positive_ranks, recall_at_k
from clip_jax.models import l2_normalize

Tokenizer = Callable[[list[str]], np.ndarray]


def zeroshot_classifier(
    encode_text: Encoder,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> jax.Array:
    """One unit-norm embedding per class, as OpenAI's prompt-engineering notebook builds it.

    Each class name is put into every template; the prompts are encoded (in
    batches of min(batch_size, C * T), the last one padded), L2-normalized,
    averaged over templates and L2-normalized again.

    Args:
      encode_text: int32 tokens [B, L] -> [B, E].
      tokenizer: list of N strings -> int32 [N, L].
      classnames: C names.
      templates: T strings with one "{}".
      batch_size: prompts encoded at once.

    Returns:
      float32 [C, E].
    """
    if not classnames:
        raise ValueError("zeroshot_classifier needs at least one class name")
    prompts = [template.format(name) for name in classnames for template in templates]
    encoder = BatchedEncoder(encode_text, min(batch_size, len(prompts)))
    encoder.add(tokenizer(prompts))
    embeds = l2_normalize(jnp.asarray(encoder.result())).reshape(len(classnames), len(templates), -1)
    return l2_normalize(embeds.mean(axis=1))


def zeroshot_metrics(
    image_embeds: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    classifier: jax.Array | np.ndarray,
    topk: Sequence[int] = (1, 5),
    block_size: int = 1024,
) -> dict[str, float]:
    """Top-k accuracy and mean per-class recall of cosine-similarity classification.

    Args:
      image_embeds: [N, E], any norm.
      labels: int [N] in [0, C).
      classifier: [C, E], one row per class.
      topk: the k of each "top{k}" metric; k > C counts as C (accuracy 1).
      block_size: images scored at once.

    Returns:
      {"top{k}" for k in topk, "mean_per_class_recall" (top-1 recall averaged
      over the classes present in labels)}.
    """
    labels = np.asarray(labels)
    num_classes = len(classifier)
    check_indices(labels, num_classes, "labels")
    ranks = np.asarray(
        positive_ranks(image_embeds, labels, classifier, jnp.arange(num_classes), block_size=block_size)
    )
    metrics = {f"top{k}": recall_at_k(ranks, k) for k in topk}
    hits_per_class = np.bincount(labels, weights=ranks < 1, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    metrics["mean_per_class_recall"] = float(np.mean(hits_per_class[counts > 0] / counts[counts > 0]))
    return metrics
