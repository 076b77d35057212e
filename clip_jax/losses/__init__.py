"""Contrastive image-text losses as pure functions of L2-normalized embeddings.

Each loss takes local embeddings [n, d], the logit scale (the multiplier, exp of
the learned parameter), and an optional `axis_name`. On one device (axis_name
None) it is the loss of the batch; called inside `jax.shard_map` with the batch
mesh axes (e.g. "data" or ("data", "fsdp")) it returns the loss of the whole
global batch on every device, every device's samples serving as negatives, with
gradients equal to the unsharded ones.

`clip_loss` and `sigmoid_loss` take `impl="all_gather"` (gathered embeddings,
[n, N] logits per device) or `impl="blockwise"` (a ring of ppermutes and tiles of
[n, block_size] logits, forward and backward; memory flat in the global batch).

    clip_loss(image_embeds, text_embeds, logit_scale, axis_name=None, *, impl, block_size)
    sigmoid_loss(image_embeds, text_embeds, logit_scale, logit_bias, axis_name=None, *, impl, block_size)
    clip_lite_loss(image_embeds, text_embeds, logit_scale, axis_name=None)
    contrastive_metrics(image_embeds, text_embeds, logit_scale, logit_bias=None, axis_name=None, *, block_size)

DeCLIP's terms (clip_jax.losses.declip): simsiam_loss, mask_tokens, masked_lm_sums, masked_lm_loss,
image_to_text_loss, multi_view_loss, nearest_neighbours, nearest_neighbour_loss.
"""
from clip_jax.losses.clip_lite import clip_lite_loss
from clip_jax.losses.declip import (image_to_text_loss, mask_tokens, masked_lm_loss, masked_lm_sums,
                                    multi_view_loss, nearest_neighbour_loss, nearest_neighbours,
                                    simsiam_loss)
from clip_jax.losses.infonce import clip_loss
from clip_jax.losses.metrics import contrastive_metrics
from clip_jax.losses.sigmoid import sigmoid_loss

__all__ = [
    "clip_loss", "sigmoid_loss", "clip_lite_loss", "contrastive_metrics",
    "simsiam_loss", "masked_lm_loss", "masked_lm_sums", "mask_tokens", "image_to_text_loss",
    "multi_view_loss", "nearest_neighbours", "nearest_neighbour_loss",
]
