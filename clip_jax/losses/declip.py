"""DeCLIP's extra supervision (Li et al. 2021, "Supervision Exists Everywhere") as pure functions.

DeCLIP adds to CLIP's loss on (image, text) pairs:
  - self-supervision within images: SimSiam on two augmented views (`simsiam_loss`);
  - self-supervision within texts: masked language modelling (`mask_tokens`,
    `masked_lm_sums`, `masked_lm_loss`);
  - multi-view supervision: CLIP's loss over every (image view, text view) pair
    (`multi_view_loss`);
  - nearest-neighbour supervision: each image against the nearest neighbour of
    its caption in a FIFO queue of past text embeddings (`nearest_neighbours`,
    `image_to_text_loss`, `nearest_neighbour_loss`).

Every loss follows `clip_jax.losses.common`: local shards [n, ...], `axis_name`
None on one device or the batch mesh axes inside `jax.shard_map`; the value is
the loss of the whole global batch (N = n * devices), identical on every
device, with gradients equal to the unsharded ones; float32.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from clip_jax.losses.common import (AxisName, Impl, all_gather, as_embeddings, axis_index, axis_size,
                                    pair_logits, psum)
from clip_jax.losses.infonce import clip_loss

COSINE_EPS = 1e-8  # as torch.nn.functional.cosine_similarity, which SimSiam uses


# ----------------------------------------------------------------------------
# SimSiam


def _unit(x: jax.Array) -> jax.Array:
    """Rows of x [n, d] divided by max(|x|, COSINE_EPS); finite gradient at 0."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), COSINE_EPS**2))


def simsiam_loss(
    p1: jax.Array, z1: jax.Array, p2: jax.Array, z2: jax.Array, axis_name: AxisName = None
) -> jax.Array:
    """SimSiam's symmetric negative cosine: 0.5 D(p1, sg(z2)) + 0.5 D(p2, sg(z1)).

    D(p, z) = -1/N sum_i cos(p_i, z_i) over the global batch, with
    cos(p, z) = p.z / (max(|p|, eps) max(|z|, eps)), eps = 1e-8.

    Args:
      p1, p2: unnormalized predictor outputs of views 1 and 2, local [n, d].
      z1, z2: unnormalized projector outputs of views 1 and 2, local [n, d];
        they are targets only (stop-gradient): the loss has zero gradient w.r.t. them.
      axis_name: None on one device; inside `jax.shard_map`, the batch mesh axes.

    Returns:
      The scalar loss of the global batch, float32, identical on every device.
    """
    if p1.ndim != 2 or any(a.shape != p1.shape for a in (z1, p2, z2)):
        raise ValueError(f"p1, z1, p2, z2 must all be [n, d]; got {[a.shape for a in (p1, z1, p2, z2)]}")
    p1, z1, p2, z2 = (a.astype(jnp.float32) for a in (p1, z1, p2, z2))
    z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
    local = jnp.sum(_unit(p1) * _unit(z2)) + jnp.sum(_unit(p2) * _unit(z1))
    return -psum(local, axis_name) / (2 * p1.shape[0] * axis_size(axis_name))


# ----------------------------------------------------------------------------
# masked language modelling


def mask_tokens(
    rng: jax.Array,
    tokens: jax.Array,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    rate: float = 0.15,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BERT's masking, as DeCLIP applies it to captions.

    Every position whose token is not in `special_ids` is selected independently
    with probability `rate`; a selected position becomes `mask_id` with
    probability 0.8, a uniformly random id in [0, vocab_size) (any id, as in
    BERT) with probability 0.1, and keeps its token with probability 0.1.

    Args:
      rng: a PRNG key; the result is a pure function of it and `tokens`.
      tokens: int32 [n, L] token ids (e.g. padding 0, start and end tokens).
      mask_id: the id that replaces 80% of the selected tokens.
      vocab_size: random replacements are drawn from [0, vocab_size).
      special_ids: ids never selected (padding, start, end, ...).
      rate: probability that a non-special position is selected.

    Returns:
      inputs: int32 [n, L], the tokens with the selected positions replaced.
      targets: int32 [n, L], the original tokens.
      weights: float32 [n, L], 1.0 at selected positions, 0.0 elsewhere.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    select_key, action_key, random_key = jax.random.split(rng, 3)
    special = jnp.isin(tokens, jnp.asarray(list(special_ids), jnp.int32))
    selected = jax.random.bernoulli(select_key, rate, tokens.shape) & ~special
    action = jax.random.uniform(action_key, tokens.shape)
    random_ids = jax.random.randint(random_key, tokens.shape, 0, vocab_size, dtype=jnp.int32)
    replaced = jnp.where(action < 0.8, jnp.int32(mask_id), jnp.where(action < 0.9, random_ids, tokens))
    return jnp.where(selected, replaced, tokens), tokens, selected.astype(jnp.float32)


def masked_lm_sums(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-example weighted cross-entropy sums and weight sums.

    Args:
      logits: [n, L, V] token logits (any float dtype; computed in float32).
      targets: int32 [n, L] target ids.
      weights: float32 [n, L], e.g. 1.0 at masked positions, 0.0 elsewhere.

    Returns:
      ce_sum: float32 [n], sum_l weights[:, l] * (logsumexp(logits[:, l]) - logits[:, l, target]).
      count: float32 [n], sum_l weights[:, l].
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - target_logits  # [n, L]
    return jnp.sum(weights * ce, axis=-1), jnp.sum(weights, axis=-1)


def masked_lm_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, axis_name: AxisName = None
) -> jax.Array:
    """The mean cross-entropy over the masked positions of the global batch.

    loss = sum(weights * CE) / max(sum(weights), 1), both sums over the global
    batch; 0 with zero gradient when nothing is masked.

    Args:
      logits: local [n, L, V] token logits.
      targets: local int32 [n, L] target ids.
      weights: local float32 [n, L] position weights.
      axis_name: None on one device; inside `jax.shard_map`, the batch mesh axes.

    Returns:
      The scalar loss of the global batch, float32, identical on every device.
    """
    ce_sum, count = masked_lm_sums(logits, targets, weights)
    total = psum(jnp.sum(ce_sum), axis_name)
    return total / jnp.maximum(psum(jnp.sum(count), axis_name), 1.0)


# ----------------------------------------------------------------------------
# multi-view and nearest-neighbour supervision


def image_to_text_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array | float,
    axis_name: AxisName = None,
) -> jax.Array:
    """One-direction InfoNCE, images as rows: 1/N sum_i [logsumexp_j s x_i.y_j - s x_i.y_i].

    The texts of the global batch (all devices) are the candidates of every image.

    Args:
      image_embeds: L2-normalized local image embeddings [n, d].
      text_embeds: L2-normalized local text embeddings [n, d] (text i matches image i).
      logit_scale: the multiplier s itself (exp of the learned parameter), scalar.
      axis_name: None on one device; inside `jax.shard_map`, the batch mesh axes.

    Returns:
      The scalar loss of the global batch, float32, identical on every device.
    """
    x, y = as_embeddings(image_embeds, text_embeds)
    scaled = jnp.asarray(logit_scale, jnp.float32) * x
    logits = pair_logits(scaled, all_gather(y, axis_name))  # [n, N]
    local = jnp.sum(jax.nn.logsumexp(logits, axis=1) - jnp.sum(scaled * y, axis=1))
    return psum(local, axis_name) / (x.shape[0] * axis_size(axis_name))


def multi_view_loss(
    image_views: Sequence[jax.Array],
    text_views: Sequence[jax.Array],
    logit_scale: jax.Array | float,
    axis_name: AxisName = None,
    *,
    impl: Impl = "all_gather",
    block_size: int = 1024,
) -> jax.Array:
    """DeCLIP's multi-view supervision: the mean of `clip_loss` over every (image view, text view) pair.

    Args:
      image_views: V sequences of L2-normalized local image embeddings, each [n, d].
      text_views: T sequences of L2-normalized local text embeddings, each [n, d].
      logit_scale: the multiplier itself, scalar.
      axis_name: None on one device; inside `jax.shard_map`, the batch mesh axes.
      impl, block_size: passed to `clip_loss`.

    Returns:
      The scalar mean of the V * T clip losses of the global batch, float32.
    """
    if not image_views or not text_views:
        raise ValueError("image_views and text_views must each hold at least one view")
    losses = [clip_loss(x, y, logit_scale, axis_name, impl=impl, block_size=block_size)
              for x in image_views for y in text_views]
    return sum(losses) / len(losses)


def nearest_neighbours(
    queries: jax.Array, queue: jax.Array, filled: jax.Array, axis_name: AxisName = None
) -> jax.Array:
    """For each query, the entry of the global queue with the highest dot product (a constant).

    The queue holds S slots of one global batch (N = n * devices) each, sharded
    like the batch along its second axis: local entry (s, r) on device k has
    global index s * N + k * n + r. Only slots with `filled[s]` are candidates;
    ties go to the lowest global index; without any filled slot each query is
    its own neighbour.

    The queue is never gathered: the (small) queries are, each device scores
    them against its own block, and the per-device bests are combined with
    pmax (score), pmin (index among the maxima) and a reduce-scatter of the
    winning vectors that leaves every device its own queries' neighbours.

    Args:
      queries: L2-normalized local queries [n, d].
      queue: the local block of the queue [S, n, d].
      filled: bool [S], the same on every device: whether slot s holds data.
      axis_name: None on one device; inside `jax.shard_map`, the batch mesh axes.

    Returns:
      float32 [n, d]: each local query's nearest queue entry, under stop_gradient.
    """
    slots, n, dim = queue.shape
    if queries.shape != (n, dim) or jnp.shape(filled) != (slots,):
        raise ValueError(f"queries must be [n, d] = {(n, dim)} and filled [S] = {(slots,)} for a queue "
                         f"[S, n, d] = {queue.shape}; got {queries.shape} and {jnp.shape(filled)}")
    queries = jax.lax.stop_gradient(queries.astype(jnp.float32))
    entries = jax.lax.stop_gradient(queue.astype(jnp.float32)).reshape(slots * n, dim)  # local s*n + r
    everyone = all_gather(queries, axis_name)  # [N, d]
    total = everyone.shape[0]
    candidate = jnp.repeat(jnp.asarray(filled, bool), n)  # [S*n]
    scores = jnp.where(candidate[None, :], pair_logits(everyone, entries), -jnp.inf)  # [N, S*n]
    local_best = jnp.argmax(scores, axis=1)  # first maximum: the lowest global index on this device
    best_score = jnp.take_along_axis(scores, local_best[:, None], axis=1)[:, 0]  # [N]
    slot, row = jnp.divmod(local_best, n)
    best_index = slot * total + axis_index(axis_name) * n + row  # [N] global indices
    is_max = best_score == _pmax(best_score, axis_name)
    winner_index = _pmin(jnp.where(is_max, best_index, jnp.iinfo(best_index.dtype).max), axis_name)
    winner = (is_max & (best_index == winner_index))[:, None]
    neighbours = _psum_scatter(jnp.where(winner, entries[local_best], 0.0), axis_name)  # [n, d]
    return jax.lax.stop_gradient(jnp.where(jnp.any(filled), neighbours, queries))


def nearest_neighbour_loss(
    image_views: Sequence[jax.Array],
    text_views: Sequence[jax.Array],
    queue: jax.Array,
    filled: jax.Array,
    logit_scale: jax.Array | float,
    axis_name: AxisName = None,
) -> jax.Array:
    """DeCLIP's nearest-neighbour supervision: images against their captions' queue neighbours.

    The mean over every (image view v, text view t) pair of
    `image_to_text_loss(image_v, nearest_neighbours(text_t, queue, filled), logit_scale)`;
    the neighbours are constants, so text views and queue get no gradient.

    Args:
      image_views: sequences of L2-normalized local image embeddings, each [n, d].
      text_views: sequences of L2-normalized local text embeddings, each [n, d].
      queue: the local block [S, n, d] of the text-embedding queue (see `nearest_neighbours`).
      filled: bool [S], whether each slot holds data.
      logit_scale: the multiplier itself, scalar.
      axis_name: None on one device; inside `jax.shard_map`, the batch mesh axes.

    Returns:
      The scalar loss of the global batch, float32, identical on every device.
    """
    if not image_views or not text_views:
        raise ValueError("image_views and text_views must each hold at least one view")
    neighbours = [nearest_neighbours(y, queue, filled, axis_name) for y in text_views]
    losses = [image_to_text_loss(x, y, logit_scale, axis_name) for x in image_views for y in neighbours]
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------
# collectives that are identities on one device


def _pmax(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else jax.lax.pmax(x, axis_name)


def _pmin(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else jax.lax.pmin(x, axis_name)


def _psum_scatter(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """[N, ...] summed over devices, each device keeping its own rows [n, ...] (the all_gather order)."""
    return x if axis_name is None else jax.lax.psum_scatter(x, axis_name, scatter_dimension=0, tiled=True)
