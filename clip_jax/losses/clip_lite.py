"""CLIP-Lite: a Jensen-Shannon mutual-information bound with one negative per positive."""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from clip_jax.losses.common import AxisName, all_gather, as_embeddings, axis_index, axis_size, from_next, pair_logits, psum

Negatives = Literal["shifted", "hardest"]


def clip_lite_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array | float,
    axis_name: AxisName = None,
    *,
    negatives: Negatives = "shifted",
    block_size: int | None = None,
) -> jax.Array:
    """CLIP-Lite's JSD loss: E_pos[softplus(-T)] + E_neg[softplus(T)].

    The critic T(x, y) = logit_scale * x.y; positives are the N matching pairs
    (x_i, y_i), and each image has one negative caption:
      "shifted": y_{(i+1) mod N}, the next caption of the global batch (the
        paper's cyclic shift); only the first caption of the next device
        crosses devices, memory O(n d);
      "hardest": the caption j != i of the global batch with the highest
        x_i.y_j (ties: the lowest j), wherever it lives; the captions are
        gathered and scored in tiles of min(block_size, n) (None: all N at
        once), so memory is O(N d + n block_size).

    Args:
      image_embeds: L2-normalized local image embeddings [n, d].
      text_embeds: L2-normalized local text embeddings [n, d].
      logit_scale: the multiplier itself (exp of the learned parameter), scalar.
      axis_name: None on one device; inside `jax.shard_map`, the mesh axis
        name(s) the batch is split over, e.g. "data" or ("data", "fsdp").
      negatives: "shifted" or "hardest".
      block_size: captions per scoring tile for "hardest"; it must divide the
        local batch n or be at least n, as for the blockwise clip and sigmoid losses.

    Returns:
      The scalar loss of the global batch, float32, identical on every device.
    """
    x, y = as_embeddings(image_embeds, text_embeds)
    if negatives == "shifted":
        negative_texts = jnp.concatenate([y[1:], from_next(y[:1], axis_name)], axis=0)  # [n, d]
    elif negatives == "hardest":
        negative_texts = hardest_negative_texts(x, y, axis_name, block_size)
    else:
        raise ValueError(f"negatives: {negatives!r} is not 'shifted' or 'hardest'")
    scaled = jnp.asarray(logit_scale, jnp.float32) * x
    positive = jnp.sum(scaled * y, axis=1)  # [n]
    negative = jnp.sum(scaled * negative_texts, axis=1)  # [n]
    local = jnp.sum(jax.nn.softplus(-positive) + jax.nn.softplus(negative))
    return psum(local, axis_name) / (x.shape[0] * axis_size(axis_name))


def hardest_negative_texts(
    image_embeds: jax.Array, text_embeds: jax.Array, axis_name: AxisName = None, block_size: int | None = None
) -> jax.Array:
    """[n, d]: for each local image, the caption of the global batch other than its own that it scores highest.

    The choice is made without gradient (it is piecewise constant); the chosen
    captions are taken from the gathered batch, so gradients reach the device
    that holds each caption.
    """
    texts = all_gather(text_embeds, axis_name)  # [N, d]
    n, total = image_embeds.shape[0], texts.shape[0]
    block = total if block_size is None else min(block_size, n)
    if block_size is not None and (block < 1 or n % block):
        raise ValueError(f"block_size {block_size} must be positive and divide the local batch size n={n}")
    own = axis_index(axis_name) * n + jnp.arange(n)  # [n] global index of each image's own caption
    images = jax.lax.stop_gradient(image_embeds)
    tiles = jax.lax.stop_gradient(texts).reshape(total // block, block, -1)

    def best_so_far(carry, inputs):
        best_score, best_index = carry
        tile_index, tile = inputs
        columns = tile_index * block + jnp.arange(block)  # [block]
        scores = jnp.where(columns[None, :] == own[:, None], -jnp.inf, pair_logits(images, tile))  # [n, block]
        index = jnp.argmax(scores, axis=1)
        score = jnp.take_along_axis(scores, index[:, None], axis=1)[:, 0]
        better = score > best_score  # strict: an earlier tile keeps a tie
        return (jnp.where(better, score, best_score), jnp.where(better, columns[index], best_index)), None

    start = (jnp.full_like(images[:, 0], -jnp.inf), jnp.zeros_like(own))  # varying like the local batch
    (_, chosen), _ = jax.lax.scan(best_so_far, start, (jnp.arange(total // block), tiles))
    return texts[chosen]
