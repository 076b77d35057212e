"""Image-text retrieval recall@k with several captions per image (COCO, Flickr30k)."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from clip_jax.evaluation.ranking import check_indices, positive_ranks, recall_at_k


def retrieval_metrics(
    image_embeds: jax.Array | np.ndarray,
    text_embeds: jax.Array | np.ndarray,
    text_to_image: jax.Array | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    block_size: int = 1024,
) -> dict[str, float]:
    """Recall@k both ways by cosine similarity, scoring block_size queries at a time.

    Text->image: a caption is a hit at k when its image is among the top k
    images. Image->text: an image is a hit at k when any of its captions is
    among the top k captions.

    Args:
      image_embeds: [Ni, E], any norm.
      text_embeds: [Nt, E], any norm.
      text_to_image: int [Nt], the index in [0, Ni) of each caption's image;
        every image needs at least one caption.
      ks: the k of each recall.
      block_size: queries scored at once (memory [block_size, max(Ni, Nt)]).

    Returns:
      {"i2t_R@{k}", "t2i_R@{k}"} for k in ks.
    """
    text_to_image = np.asarray(text_to_image)
    num_images = len(image_embeds)
    if len(text_to_image) != len(text_embeds):
        raise ValueError(f"text_to_image has {len(text_to_image)} entries for {len(text_embeds)} captions")
    check_indices(text_to_image, num_images, "text_to_image")
    captions_per_image = np.bincount(text_to_image, minlength=num_images)
    if not captions_per_image.all():
        raise ValueError(f"{np.sum(captions_per_image == 0)} of {num_images} images have no caption")
    image_ids = np.arange(num_images)
    i2t = positive_ranks(image_embeds, image_ids, text_embeds, text_to_image, block_size=block_size)
    t2i = positive_ranks(text_embeds, text_to_image, image_embeds, image_ids, block_size=block_size)
    return {
        **{f"i2t_R@{k}": recall_at_k(i2t, k) for k in ks},
        **{f"t2i_R@{k}": recall_at_k(t2i, k) for k in ks},
    }
