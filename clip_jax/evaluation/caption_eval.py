"""Scores generated captions given as token rows: BLEU-1..4, CIDEr-D and, for labelled images, class naming.

    caption_eval_metrics(generated, references, caption_mask, tokenizer)
    # {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}
    caption_eval_metrics(..., labels=labels, classnames=["red", "green", ...])
    # ... and "named": the share of captions that name their image's class and no other

Token rows are the tokenizer's layout: the generated ones are the ids after
the prompt (a caption LM's start token), the references the input
pipeline's caption rows (start token, ids, end token, padding). A row's text
is what precedes its first framing id (`tokenizer.special_ids`: padding, end)
after a leading start token.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from clip_jax.evaluation.captioning import captioning_metrics, tokenize_caption


class CaptionTokenizer(Protocol):
    special_ids: tuple[int, ...]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str: ...


def row_text(ids: np.ndarray, tokenizer: CaptionTokenizer) -> str:
    """The text of one token row [L]: the ids after a leading start token, up to the first framing id."""
    ids = [int(i) for i in ids]
    start = getattr(tokenizer, "sot_token_id", None)
    if ids and start is not None and ids[0] == start:
        ids = ids[1:]
    special = set(tokenizer.special_ids)
    end = next((i for i, token in enumerate(ids) if token in special), len(ids))
    return tokenizer.decode(ids[:end]).strip()


def named_classes(caption: str, classnames: Sequence[str]) -> set[int]:
    """The classes `caption` names: whole-word occurrences of class names (coco-caption's tokens), except
    those inside the occurrence of a longer name ("red" in "dark red")."""
    words = tokenize_caption(caption)
    spans = []  # (start, end, class)
    for index, name in enumerate(classnames):
        target = tokenize_caption(name)
        spans += [(i, i + len(target), index) for i in range(len(words) - len(target) + 1) if words[i : i + len(target)] == target]
    inside = lambda a, b: b[0] <= a[0] and a[1] <= b[1] and (a[0], a[1]) != (b[0], b[1])
    return {span[2] for span in spans if not any(inside(span, other) for other in spans)}


def names_class(caption: str, label: int, classnames: Sequence[str]) -> bool:
    """Whether `caption` names classnames[label] and no other class (named_classes)."""
    return named_classes(caption, classnames) == {label}


def caption_eval_metrics(
    generated: np.ndarray,
    references: np.ndarray,
    caption_mask: np.ndarray,
    tokenizer: CaptionTokenizer,
    labels: np.ndarray | None = None,
    classnames: Sequence[str] | None = None,
) -> dict[str, float]:
    """Metrics of N generated captions.

    Args:
      generated: int [N, T] the generated ids of each image.
      references: int [N, K, L] each image's reference caption rows.
      caption_mask: bool [N, K] which references exist (at least one per image).
      tokenizer: decodes the ids (and gives the framing ids).
      labels: int [N] the images' classes, with `classnames`, for "named".

    Returns:
      {"bleu1".."bleu4", "cider"} of captioning_metrics, and "named" (share of
      captions naming their class and no other) when labels and classnames are given.
    """
    candidates = [row_text(row, tokenizer) for row in generated]
    reference_texts = [
        [row_text(row, tokenizer) for row, exists in zip(rows, mask) if exists] for rows, mask in zip(references, caption_mask)
    ]
    metrics = captioning_metrics(candidates, reference_texts)
    if labels is not None and classnames:
        metrics["named"] = float(np.mean([names_class(c, int(y), classnames) for c, y in zip(candidates, labels)]))
    return metrics
