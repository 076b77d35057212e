"""CLIP-Lite: a Jensen-Shannon mutual-information bound with one negative per positive."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from clip_jax.losses.common import AxisName, as_embeddings, axis_size, from_next, psum


def clip_lite_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array | float,
    axis_name: AxisName = None,
) -> jax.Array:
    """CLIP-Lite's JSD loss: E_pos[softplus(-T)] + E_neg[softplus(T)].

    The critic T(x, y) = logit_scale * x.y; positives are the N matching pairs
    (x_i, y_i), negatives the N pairs (x_i, y_{(i+1) mod N}) of each image with
    the next caption of the global batch (a cyclic shift). Memory is O(n d): only
    the first caption of the next device crosses devices.

    Args:
      image_embeds: L2-normalized local image embeddings [n, d].
      text_embeds: L2-normalized local text embeddings [n, d].
      logit_scale: the multiplier itself (exp of the learned parameter), scalar.
      axis_name: None on one device; inside `jax.shard_map`, the mesh axis
        name(s) the batch is split over, e.g. "data" or ("data", "fsdp").

    Returns:
      The scalar loss of the global batch, float32, identical on every device.
    """
    x, y = as_embeddings(image_embeds, text_embeds)
    scaled = jnp.asarray(logit_scale, jnp.float32) * x
    next_texts = jnp.concatenate([y[1:], from_next(y[:1], axis_name)], axis=0)  # [n, d]
    positive = jnp.sum(scaled * y, axis=1)  # [n]
    negative = jnp.sum(scaled * next_texts, axis=1)  # [n]
    local = jnp.sum(jax.nn.softplus(-positive) + jax.nn.softplus(negative))
    return psum(local, axis_name) / (x.shape[0] * axis_size(axis_name))
