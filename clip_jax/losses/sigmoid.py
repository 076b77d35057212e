"""SigLIP's pairwise sigmoid loss over the global batch, dense or blockwise."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_jax.losses.common import (AxisName, Impl, all_gather, as_embeddings, axis_index, pair_logits,
                                    psum)
from clip_jax.losses.ring import TileRule, blockwise_pair_loss


def _softplus_init(template: jax.Array):
    return jnp.zeros_like(template), ()


def _softplus_update(logits: jax.Array, row: jax.Array, col: tuple):
    return row + jnp.sum(jax.nn.softplus(logits), axis=1), col


def _softplus_total(row: jax.Array, col: tuple) -> jax.Array:
    return jnp.sum(row)


def _softplus_dlogits(logits: jax.Array, row: jax.Array, col: tuple) -> jax.Array:
    return jax.nn.sigmoid(logits)


# -log sigmoid(z L) = softplus(L) - [z = 1] L: each image's row sum of softplus over
# all texts, minus the diagonal; no column statistics.
SIGMOID_RULE = TileRule(init=_softplus_init, update=_softplus_update, total=_softplus_total,
                        dlogits=_softplus_dlogits)


def sigmoid_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array | float,
    logit_bias: jax.Array | float,
    axis_name: AxisName = None,
    *,
    impl: Impl = "all_gather",
    block_size: int = 1024,
) -> jax.Array:
    """SigLIP: -(1/N) sum_i sum_j log sigmoid(z_ij (logit_scale x_i.y_j + logit_bias)).

    z_ij is 1 for the matching pair (i == j) and -1 for every other pair of the
    global batch of N.

    Args:
      image_embeds: L2-normalized local image embeddings [n, d].
      text_embeds: L2-normalized local text embeddings [n, d].
      logit_scale: the multiplier itself (exp of the learned parameter), scalar.
      logit_bias: the learned bias, scalar.
      axis_name: None on one device; inside `jax.shard_map`, the mesh axis
        name(s) the batch is split over, e.g. "data" or ("data", "fsdp").
      impl: "all_gather" gathers the global texts and holds [n, N] logits;
        "blockwise" rings text blocks over devices and tiles inside each,
        holding at most an [n, block_size] tile forward and backward.
      block_size: texts per tile for "blockwise"; must divide n (or be >= n).

    Returns:
      The scalar loss of the global batch, float32, identical on every device;
      its gradients w.r.t. the local inputs are the slices of the global ones.
    """
    x, y = as_embeddings(image_embeds, text_embeds)
    scaled = jnp.asarray(logit_scale, jnp.float32) * x
    bias = jnp.asarray(logit_bias, jnp.float32)
    if impl == "blockwise":
        row_bias = bias + jnp.zeros_like(x[:, 0])  # [n], varying like the local batch
        return blockwise_pair_loss(SIGMOID_RULE, scaled, y, row_bias, axis_name=axis_name,
                                   block_size=block_size)
    if impl != "all_gather":
        raise ValueError(f"impl must be 'all_gather' or 'blockwise', got {impl!r}")
    logits = pair_logits(scaled, all_gather(y, axis_name), bias)  # [n, N]
    n, global_batch = logits.shape
    rows = axis_index(axis_name) * n + jnp.arange(n)
    labels = jnp.where(rows[:, None] == jnp.arange(global_batch)[None, :], 1.0, -1.0)
    local = -jnp.sum(jax.nn.log_sigmoid(labels * logits))
    return psum(local, axis_name) / global_batch
