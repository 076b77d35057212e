"""Linear probe: multinomial logistic regression on frozen features, fitted by full-batch L-BFGS."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, jax.Array]

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    val_fraction: float = 0.2,
    max_steps: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Test accuracy of a softmax classifier with the L2 weight chosen on held-out train rows.

    Features are standardized with the train statistics. For each L2 weight in
    l2_grid a classifier is fitted on the train rows outside a fixed random
    validation split (val_fraction of them, drawn from `seed`); the weight with
    the best validation accuracy (ties: the stronger one) is refitted on all
    train rows and scored on the test set. Deterministic for fixed inputs.

    Args:
      train_features: [N, E].
      train_labels: int [N].
      test_features: [M, E].
      test_labels: int [M].
      l2_grid: candidate weights of 0.5 * ||W||^2 added to the mean cross-entropy.
      val_fraction: share of train rows held out for choosing the L2 weight.
      max_steps: L-BFGS iterations at most per fit (stopping early at convergence).
      seed: seed of the validation split.

    Returns:
      {"top1": test accuracy}.
    """
    if len(train_labels) < 2:
        raise ValueError(f"linear_probe needs at least 2 train rows, got {len(train_labels)}")
    mean, std = train_features.mean(axis=0), train_features.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    x_train = jnp.asarray((train_features - mean) / std, jnp.float32)
    x_test = jnp.asarray((test_features - mean) / std, jnp.float32)
    y_train, y_test = jnp.asarray(train_labels), jnp.asarray(test_labels)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    fit = partial(_fit, x_train, y_train, num_classes=num_classes, max_steps=max_steps)

    is_val = _validation_mask(len(train_labels), val_fraction, seed)
    val_accuracy = [
        _accuracy(fit(jnp.asarray(~is_val, jnp.float32), l2), x_train[is_val], y_train[is_val]) for l2 in l2_grid
    ]
    _, best_l2 = max(zip(val_accuracy, l2_grid))
    params = fit(jnp.ones(len(train_labels), jnp.float32), best_l2)
    return {"top1": _accuracy(params, x_test, y_test)}


def _validation_mask(num_rows: int, val_fraction: float, seed: int) -> np.ndarray:
    """bool [num_rows], True on a random round(val_fraction * num_rows) rows (at least 1, never all)."""
    num_val = min(max(1, round(val_fraction * num_rows)), num_rows - 1)
    mask = np.zeros(num_rows, bool)
    mask[np.random.default_rng(seed).permutation(num_rows)[:num_val]] = True
    return mask


def _logits(params: Params, features: jax.Array) -> jax.Array:
    return features @ params["w"] + params["b"]


def _accuracy(params: Params, features: jax.Array, labels: jax.Array) -> float:
    return float(np.mean(np.asarray(jnp.argmax(_logits(params, features), axis=-1) == labels)))


@partial(jax.jit, static_argnames=("num_classes", "max_steps"))
def _fit(
    features: jax.Array, labels: jax.Array, weights: jax.Array, l2: float, *, num_classes: int, max_steps: int
) -> Params:
    """L-BFGS on weights-averaged cross-entropy + 0.5 * l2 * ||w||^2 from zeros.

    features [N, E], labels int [N], weights float [N] (0 drops a row) ->
    {"w": [E, C], "b": [C]}. Stops after max_steps or when the gradient norm
    falls below 1e-6.
    """

    def loss(params: Params) -> jax.Array:
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(_logits(params, features), labels)
        return jnp.sum(weights * cross_entropy) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(params["w"] ** 2)

    optimizer = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def running(carry) -> jax.Array:
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_steps) & (grad_norm >= 1e-6))

    params = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    params, _ = jax.lax.while_loop(running, step, (params, optimizer.init(params)))
    return params
