"""Linear probe as in CLIP (Radford et al. 2021, appendix A.3): L2-regularised
multinomial logistic regression on frozen features, fitted by full-batch L-BFGS,
with the L2 strength chosen by a parametric binary search on a validation split.

The objective is scikit-learn's `LogisticRegression(C=1/l2)` (multinomial, with
an intercept, lbfgs), the classifier CLIP's paper and code used:

    minimise over W [E, C], b [C]:   sum_i CE(x_i W + b, y_i) + 0.5 * l2 * ||W||^2

(b is not regularised), so l2 = λ = 1 / C. It is minimised in scikit-learn's
(>= 1.1) scaling, divided by the number of rows N,

    mean_i CE(x_i W + b, y_i) + 0.5 * (l2 / N) * ||W||^2,

which has the same minimiser and on whose gradient the tolerance is defined.
The search follows CLIP: l2 over 10^-6 .. 10^6 at 8 steps per decade (the 97
values 10^(k/8), k = -48 .. 48, i.e. 96 steps), starting at 10^-6, 10^-4, ...,
10^6 and halving the step around the best value until it is 1/8 decade.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = dict[str, jax.Array]

L2_STEPS_PER_DECADE = 8
L2_MIN_EXPONENT, L2_MAX_EXPONENT = -6, 6
_K_MIN, _K_MAX = L2_MIN_EXPONENT * L2_STEPS_PER_DECADE, L2_MAX_EXPONENT * L2_STEPS_PER_DECADE
_K_START = 2 * L2_STEPS_PER_DECADE  # the first grid: every 2 decades


def l2_value(k: int) -> float:
    """The k-th L2 strength of the search grid: 10 ** (k / 8)."""
    return float(10.0 ** (k / L2_STEPS_PER_DECADE))


def l2_grid() -> np.ndarray:
    """All 97 L2 strengths the search can visit, 10^-6 .. 10^6 at 8 per decade, ascending."""
    return np.array([l2_value(k) for k in range(_K_MIN, _K_MAX + 1)])


def search_l2(score: Callable[[int, int | None], float]) -> tuple[int, list[int]]:
    """CLIP's parametric binary search for the L2 strength, on grid indices k (l2 = l2_value(k)).

    score(k, warm) is the validation accuracy at l2_value(k); warm is the
    already scored index whose solution should start the fit (None: start from
    zeros). Visits, in this order:
      1. k = 48, 32, ..., -48 (l2 = 10^6, 10^4, ..., 10^-6: the regularisation
         path from strong to weak, each warm-started from the one before);
      2. with step s = 8, 4, 2, 1 in turn: best + s, then best - s, where best
         is the highest-scoring index visited so far and only indices inside
         [-48, 48] not yet visited are scored, each warm-started from best.
    Ties in score go to the larger l2 (the stronger regularisation): a
    deterministic choice that does not depend on the order of visits.

    Returns:
      (best index, all visited indices in order). For a score that is strictly
      unimodal over the 97 indices, best is its argmax: the best visited index
      always has its visited neighbours at +-s scoring lower, so the peak lies
      within s of it.
    """
    scores: dict[int, float] = {}
    visited: list[int] = []

    def visit(k: int, warm: int | None) -> None:
        scores[k] = score(k, warm)
        visited.append(k)

    def best() -> int:
        return max(scores, key=lambda k: (scores[k], k))

    previous = None
    for k in range(_K_MAX, _K_MIN - 1, -_K_START):
        visit(k, previous)
        previous = k
    step = _K_START
    while step > 1:
        step //= 2
        center = best()
        for k in (center + step, center - step):
            if _K_MIN <= k <= _K_MAX and k not in scores:
                visit(k, center)
    return best(), visited


def linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    val_features: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    val_fraction: float = 0.2,
    max_iter: int = 1000,
    tol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Test accuracy of the softmax classifier whose L2 strength CLIP's search picks on a validation split.

    The validation split is val_features/val_labels when given, else a fixed
    random val_fraction of the train rows (drawn from `seed`). For each l2 the
    search (search_l2) visits, a classifier is fitted on the train rows outside
    the validation split and scored on it; with the chosen l2 it is refitted on
    train + validation rows together (warm-started from the search's solution)
    and scored on the test set. Features are used as given (float32), without
    standardisation: CLIP fitted scikit-learn on the raw features, and the
    12 decades of l2 absorb their scale. Deterministic for fixed inputs.

    Each fit is L-BFGS (10 pairs of memory, zoom line search of at most 50
    steps as scikit-learn's maxls) on the mean-scaled objective of the module
    docstring, stopping after max_iter iterations, or when the largest
    absolute gradient entry is <= tol (scipy's pgtol, which scikit-learn sets
    to its tol, 1e-4 by default), or when a line search ends without a step
    satisfying its sufficient-decrease condition (Armijo, or Hager-Zhang's
    approximate one near the minimum; scipy also stops on a failed line
    search). scipy's other test, a relative decrease below 64 float64
    epsilons, has no float32 counterpart: near the optimum float32 cannot
    resolve the decrease, which is why the approximate condition is needed.
    The fit is compiled once per shape: l2, the row weights that select the
    train rows and the starting point are traced arguments. A fit starts from
    the solution of a neighbouring l2 (see search_l2): the objective is convex
    with a unique optimal W, so the start only changes where within the
    tolerance a fit stops (noticeably so only for weak l2 on nearly separable
    rows, where the optimum is flat, as for scikit-learn), and saves iterations.

    Args:
      train_features: [N, E].
      train_labels: int [N].
      test_features: [M, E].
      test_labels: int [M].
      val_features: [V, E], an explicit validation set (with val_labels), or None.
      val_labels: int [V].
      val_fraction: share of train rows held out for the search when no
        validation set is given (at least 1 row, never all).
      max_iter: L-BFGS iterations at most per fit (scikit-learn's max_iter; CLIP's 1,000).
      tol: stop when max |gradient| of the mean-scaled objective is <= tol.
      seed: seed of the held-out split.

    Returns:
      {"top1": test accuracy, "val_top1": validation accuracy at the chosen l2,
       "l2": the chosen l2 (= 1 / scikit-learn's C)}.
    """
    if (val_features is None) != (val_labels is None):
        raise ValueError("linear_probe needs both val_features and val_labels, or neither")
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    if val_labels is None:
        if len(train_labels) < 2:
            raise ValueError(f"linear_probe needs at least 2 train rows, got {len(train_labels)}")
        features, labels = np.asarray(train_features), train_labels
        is_val = _validation_mask(len(train_labels), val_fraction, seed)
    else:
        val_labels = np.asarray(val_labels)
        if not len(train_labels) or not len(val_labels):
            raise ValueError(f"linear_probe needs train and val rows, got {len(train_labels)} and {len(val_labels)}")
        features = np.concatenate([np.asarray(train_features), np.asarray(val_features)])
        labels = np.concatenate([train_labels, val_labels])
        is_val = np.arange(len(labels)) >= len(train_labels)
    num_classes = int(max(labels.max(), test_labels.max())) + 1
    x, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32)
    val_weights, fit_weights = jnp.asarray(is_val, jnp.float32), jnp.asarray(~is_val, jnp.float32)
    zeros = {"w": jnp.zeros((x.shape[1], num_classes), jnp.float32), "b": jnp.zeros(num_classes, jnp.float32)}

    solutions: dict[int, Params] = {}
    correct: dict[int, int] = {}

    def score(k: int, warm: int | None) -> float:
        solutions[k] = fit(x, y, fit_weights, l2_value(k), zeros if warm is None else solutions[warm], max_iter, tol)
        correct[k] = int(_num_correct(solutions[k], x, y, val_weights))
        return correct[k]

    best, _ = search_l2(score)
    params = fit(x, y, jnp.ones(len(labels), jnp.float32), l2_value(best), solutions[best], max_iter, tol)
    test_correct = _num_correct(params, jnp.asarray(test_features, jnp.float32), jnp.asarray(test_labels, jnp.int32))
    return {
        "top1": int(test_correct) / len(test_labels),
        "val_top1": correct[best] / int(is_val.sum()),
        "l2": l2_value(best),
    }


def _validation_mask(num_rows: int, val_fraction: float, seed: int) -> np.ndarray:
    """bool [num_rows], True on a random round(val_fraction * num_rows) rows (at least 1, never all)."""
    num_val = min(max(1, round(val_fraction * num_rows)), num_rows - 1)
    mask = np.zeros(num_rows, bool)
    mask[np.random.default_rng(seed).permutation(num_rows)[:num_val]] = True
    return mask


def _logits(params: Params, features: jax.Array) -> jax.Array:
    return features @ params["w"] + params["b"]


@jax.jit
def _num_correct(params: Params, features: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Rows (where weights is 1, or all) whose argmax logit is their label; an exact int count."""
    hit = jnp.argmax(_logits(params, features), axis=-1) == labels
    return jnp.sum(hit if weights is None else hit & (weights > 0))


def objective(params: Params, features: jax.Array, labels: jax.Array, weights: jax.Array, l2: jax.Array) -> jax.Array:
    """sum_i weights_i * CE_i / sum(weights) + 0.5 * l2 / sum(weights) * ||w||^2 (b unregularised).

    The scikit-learn objective 0.5 ||w||^2 + C sum_i CE_i with C = 1 / l2,
    divided by C * sum(weights): the same minimiser. weights are 0/1 row
    selectors (0 drops a row).
    """
    num_rows = jnp.sum(weights)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(_logits(params, features), labels)
    return (jnp.sum(weights * cross_entropy) + 0.5 * l2 * jnp.sum(params["w"] ** 2)) / num_rows


@jax.jit
def _fit(
    features: jax.Array, labels: jax.Array, weights: jax.Array, l2: jax.Array, init: Params, max_iter: jax.Array,
    tol: jax.Array,
) -> tuple[Params, jax.Array]:
    """L-BFGS on `objective` from init -> (params {"w": [E, C], "b": [C]}, iterations taken).

    Stops after max_iter iterations, when max |gradient| <= tol, or when a
    line search ends without a step of sufficient decrease. Every argument is
    traced: one compilation per shape of (features, labels, weights, init).
    """

    def loss(params: Params) -> jax.Array:
        return objective(params, features, labels, weights, l2)

    optimizer = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=50))
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state

    def running(carry) -> jax.Array:
        _, state = carry
        count = optax.tree.get(state, "count")
        grads = jax.tree.leaves(optax.tree.get(state, "grad"))
        largest_grad = jnp.max(jnp.stack([jnp.max(jnp.abs(g)) for g in grads]))
        line_search_failed = optax.tree.get(state, "info").decrease_error > 0
        return (count == 0) | ((count < max_iter) & (largest_grad > tol) & ~line_search_failed)

    params, state = jax.lax.while_loop(running, step, (init, optimizer.init(init)))
    return params, optax.tree.get(state, "count")


def fit(
    features: jax.Array, labels: jax.Array, weights: jax.Array, l2: float, init: Params, max_iter: int = 1000,
    tol: float = 1e-4,
) -> Params:
    """The minimiser of `objective` at l2 by L-BFGS from init (see _fit): {"w": [E, C], "b": [C]}."""
    params, _ = _fit(features, labels, weights, jnp.float32(l2), init, jnp.int32(max_iter), jnp.float32(tol))
    return params
