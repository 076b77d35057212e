"""The ranking core shared by zero-shot classification and retrieval, blocked over queries."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.models import l2_normalize


@partial(jax.jit, static_argnames=("block_size",))
def positive_ranks(
    queries: jax.Array,
    query_ids: jax.Array,
    candidates: jax.Array,
    candidate_ids: jax.Array,
    block_size: int = 1024,
) -> jax.Array:
    """For each query, how many candidates beat its best positive (cosine similarity).

    A candidate is a positive of a query when their ids are equal. Rank 0 means
    a positive is the top candidate, so recall@k = mean(rank < k); ties count
    in the query's favour, and a query with no positive gets rank Nc. Only
    [block_size, Nc] similarities exist at once.

    Args:
      queries: [Nq, E], any norm.
      query_ids: int [Nq].
      candidates: [Nc, E], any norm.
      candidate_ids: int [Nc].
      block_size: queries scored at once.

    Returns:
      int32 [Nq].
    """
    candidates = l2_normalize(candidates)

    def rank(query: jax.Array, query_id: jax.Array) -> jax.Array:
        scores = jnp.matmul(candidates, l2_normalize(query), precision=jax.lax.Precision.HIGHEST)
        best_positive = jnp.max(jnp.where(candidate_ids == query_id, scores, -jnp.inf))
        return jnp.sum(scores > best_positive, dtype=jnp.int32)

    return jax.lax.map(lambda args: rank(*args), (queries, query_ids), batch_size=block_size)


def check_indices(indices: np.ndarray, size: int, name: str) -> None:
    """Raises unless every entry of the int array `indices` lies in [0, size)."""
    if len(indices) and (indices.min() < 0 or indices.max() >= size):
        raise ValueError(f"{name} must lie in [0, {size}), got [{indices.min()}, {indices.max()}]")


def recall_at_k(ranks: jax.Array | np.ndarray, k: int) -> float:
    """Fraction of queries with a positive among the top k: ranks int [N] -> float."""
    return float(np.mean(np.asarray(ranks) < k))
