"""The in-batch metrics a contrastive trainer logs, memory-flat like the blockwise losses."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_jax.losses.common import AxisName, as_embeddings, axis_index, axis_size, pair_logits, psum
from clip_jax.losses.ring import ring_fold


def _running_argmax(best: jax.Array, best_index: jax.Array, values: jax.Array, indices: jax.Array):
    better = values > best
    return jnp.where(better, values, best), jnp.where(better, indices, best_index)


def contrastive_metrics(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float | None = None,
    axis_name: AxisName = None,
    *,
    block_size: int = 1024,
) -> dict[str, jax.Array]:
    """Positive/negative logit means and top-1 retrieval accuracy within the global batch.

    Logits L = logit_scale * X @ Y.T + logit_bias over the global batch of N,
    visited tile by tile around the ring of devices (at most [n, block_size] at
    once), so it can be logged at any batch size. No gradients flow through it.

    Args:
      image_embeds: L2-normalized local image embeddings [n, d].
      text_embeds: L2-normalized local text embeddings [n, d].
      logit_scale: the multiplier itself (exp of the learned parameter), scalar.
      logit_bias: the bias of sigmoid models, or None.
      axis_name: None on one device; inside `jax.shard_map`, the mesh axis
        name(s) the batch is split over.
      block_size: texts per tile; must divide n (or be >= n).

    Returns:
      Scalars, identical on every device:
        i2t_top1: fraction of images whose highest-scoring text is their own;
        t2i_top1: fraction of texts whose highest-scoring image is their own;
        pos_logit_mean: mean of the N matching-pair logits L_ii;
        neg_logit_mean: mean of the N (N - 1) other logits (the bias if N = 1).
      Ties are broken arbitrarily.
    """
    x, y = as_embeddings(jax.lax.stop_gradient(image_embeds), jax.lax.stop_gradient(text_embeds))
    scaled = jax.lax.stop_gradient(jnp.asarray(logit_scale, jnp.float32)) * x
    bias = 0.0 if logit_bias is None else jax.lax.stop_gradient(jnp.asarray(logit_bias, jnp.float32))
    n = x.shape[0]
    global_batch = n * axis_size(axis_name)
    own = axis_index(axis_name) * n + jnp.arange(n)  # global indices of the local pairs

    def tile(text_chunk, col_start, carry, travel_chunk):
        row_best, row_index, total = carry
        logits = pair_logits(scaled, text_chunk)  # [n, c], without the bias
        cols = col_start + jnp.arange(text_chunk.shape[0])
        row_best, row_index = _running_argmax(
            row_best, row_index, jnp.max(logits, axis=1), cols[jnp.argmax(logits, axis=1)])
        travel_chunk = _running_argmax(
            *travel_chunk, jnp.max(logits, axis=0), own[jnp.argmax(logits, axis=0)])
        return (row_best, row_index, total + jnp.sum(logits)), travel_chunk

    best = jnp.full_like(x[:, 0], -jnp.inf)
    index = jnp.zeros_like(x[:, 0], jnp.int32) + jnp.zeros_like(own)  # varies like both
    (_, row_index, total), (_, col_index) = ring_fold(
        tile, y, (best, index, jnp.zeros_like(x[0, 0])), (best, index),
        axis_name=axis_name, block_size=block_size)

    diagonal = psum(jnp.sum(scaled * y), axis_name)
    negatives = max(global_batch * (global_batch - 1), 1)
    return {
        "i2t_top1": psum(jnp.sum(row_index == own), axis_name) / global_batch,
        "t2i_top1": psum(jnp.sum(col_index == own), axis_name) / global_batch,
        "pos_logit_mean": diagonal / global_batch + bias,
        "neg_logit_mean": (psum(total, axis_name) - diagonal) / negatives + bias,
    }
