"""Non-finite steps: held back inside the step, counted, and a run that stays non-finite ends.

A step whose loss, gradient or new parameters are not finite leaves the
parameters, the optimizer state, the batch statistics and the objective's
state as they were (a select in the jitted step: no host sync); the step
counter moves on, so the next step takes the next batch. The counts travel in
the state ('nonfinite') and come out with every step's metrics:

    train/nonfinite_steps       non-finite steps of the run so far (logged)
    train/nonfinite_in_a_row    the current run of them
    train/last_finite_loss      the loss of the newest finite step

The loop reads the count of the step before the one it dispatched, so the
devices stay a step ahead, ends the run after config.max_nonfinite_steps in a
row (`Diverged`), and saves a checkpoint only after a finite step: a state is
finite by construction, and a diverging run never rotates good checkpoints away.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from clip_jax.runtime.errors import RunError

Counters = dict[str, jax.Array]


class Diverged(RunError):
    """config.max_nonfinite_steps non-finite steps in a row."""


def init_counters() -> Counters:
    """No non-finite step yet; the last finite loss is NaN until the first finite step."""
    return {"total": jnp.zeros((), jnp.int32), "in_a_row": jnp.zeros((), jnp.int32),
            "last_finite_loss": jnp.full((), jnp.nan, jnp.float32)}


def is_finite(loss: jax.Array, grad_norm: jax.Array, new_param_norm: jax.Array) -> jax.Array:
    """A bool scalar: the step's loss, gradient and new parameters are finite.

    A norm is finite exactly when every entry is and the sum of squares does not overflow (an entry above
    1.8e19 counts as diverged). AdamW's moments follow from a finite gradient; BatchNorm statistics and the
    objective's state (DeCLIP's queue) come from the forward pass whose loss is checked.
    """
    return jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(new_param_norm)


def hold_back(finite: jax.Array, proposed: Any, current: Any) -> Any:
    """`proposed` where the step is `finite`, else `current` (same structure)."""
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), proposed, current)


def count(counters: Counters, finite: jax.Array, loss: jax.Array) -> Counters:
    """The counters after a step that was `finite` (or not) with loss `loss`."""
    return {
        "total": counters["total"] + (~finite).astype(jnp.int32),
        "in_a_row": jnp.where(finite, 0, counters["in_a_row"] + 1),
        "last_finite_loss": jnp.where(finite, loss.astype(jnp.float32), counters["last_finite_loss"]),
    }


def metrics(counters: Counters) -> dict[str, jax.Array]:
    """The counters as the step's metrics."""
    return {"train/nonfinite_steps": counters["total"], "train/nonfinite_in_a_row": counters["in_a_row"],
            "train/last_finite_loss": counters["last_finite_loss"]}


def in_a_row(step_metrics: dict[str, jax.Array]) -> int:
    """How many steps in a row up to the one of `step_metrics` were non-finite (waits for that step)."""
    return int(step_metrics["train/nonfinite_in_a_row"])


def stop_if_diverged(step_metrics: dict[str, jax.Array], step: int, max_in_a_row: int) -> None:
    """Raises Diverged when train step `step` (1-based) made max_in_a_row non-finite steps in a row."""
    streak = in_a_row(step_metrics)
    if streak < max_in_a_row:
        return
    last = step - streak
    loss = float(step_metrics["train/last_finite_loss"])
    finite = f"the last finite loss was {loss:.6g}, at step {last}" if last else "no step was finite"
    raise Diverged(
        f"training diverged: steps {last + 1}-{step} were all non-finite ({streak} in a row, "
        f"config.max_nonfinite_steps = {max_in_a_row}); {finite}. No checkpoint holds a non-finite value."
    )
