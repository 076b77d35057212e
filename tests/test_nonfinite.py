"""A non-finite step changes nothing but the step counter and the counts; a run of them ends the run.

DeCLIP carries every kind of state a step can hold back: parameters, Adam's moments, BatchNorm statistics
(its SimSiam heads) and the objective's own state (the text queue).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_step import make_batch, small_config

from clip_jax.runtime import sharding
from clip_jax.training import nonfinite, train_step
from clip_jax.training.objectives import OBJECTIVES, Declip, model_from_config

POISONED_STEP = 1  # 0-based: the second of three steps


class PoisonedDeclip(Declip):
    """DeCLIP whose loss is NaN at step POISONED_STEP (and so are its gradients); the same otherwise."""

    def loss(self, outputs, scalars, extra, step, axis_name):
        loss, metrics, new_extra = super().loss(outputs, scalars, extra, step, axis_name)
        return loss * jnp.where(step == POISONED_STEP, jnp.nan, 1.0), metrics, new_extra


@pytest.fixture(scope="module")
def poisoned_training():
    """The compiled training of PoisonedDeclip on data=2 x fsdp=4, and its mesh."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(OBJECTIVES, "declip", PoisonedDeclip)
        config = small_config(loss="declip")
        config.declip.update(projection_dim=32, queue_size=2 * 16)
        model, _ = model_from_config(config)
        mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1})
        yield train_step.compile_training(model, config, mesh, jax.random.key(0)), mesh


def batch(i, mesh):
    return jax.device_put(make_batch(i), sharding.batch_sharding(mesh))


def held_state(state):
    """What a non-finite step must leave as it was."""
    return jax.device_get({k: state[k] for k in ("params", "opt_state", "batch_stats", "extra")})


def test_a_nonfinite_step_is_skipped_and_the_run_goes_on_as_without_it(poisoned_training):
    """Three steps with the second poisoned end bit for bit where steps 1 and 3 alone end (the same compiled
    program, the step counter moved past the second batch by hand): the skipped step is only missing."""
    compiled, mesh = poisoned_training
    state = compiled.init(jax.random.key(0))
    state, _, _ = compiled.step(state, batch(0, mesh))
    before = held_state(state)
    assert jax.tree.leaves(before["batch_stats"]) and jax.tree.leaves(before["extra"])  # every kind of state
    state, metrics, _ = compiled.step(state, batch(1, mesh))
    metrics = jax.device_get(metrics)
    assert not np.isfinite(metrics["loss"]) and metrics["train/nonfinite_steps"] == 1
    assert metrics["train/nonfinite_in_a_row"] == 1 and np.isfinite(metrics["train/last_finite_loss"])
    jax.tree.map(np.testing.assert_array_equal, held_state(state), before)
    assert int(state["step"]) == 2
    state, metrics, _ = compiled.step(state, batch(2, mesh))
    assert jax.device_get(metrics["train/nonfinite_in_a_row"]) == 0 and jax.device_get(metrics["train/nonfinite_steps"]) == 1

    reference = compiled.init(jax.random.key(0))
    reference, _, _ = compiled.step(reference, batch(0, mesh))
    reference = {**reference, "step": reference["step"] + 1}  # batch 1 consumed without an update
    reference, _, _ = compiled.step(reference, batch(2, mesh))
    assert jax.device_get(reference["nonfinite"]["total"]) == 0
    jax.tree.map(np.testing.assert_array_equal, held_state(state), held_state(reference))
    assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(held_state(state)["extra"]))  # the queue filled


def test_diverged_names_the_steps_and_the_last_finite_loss():
    step_metrics = {"train/nonfinite_in_a_row": np.int32(20), "train/last_finite_loss": np.float32(2.5)}
    nonfinite.stop_if_diverged(step_metrics, step=24, max_in_a_row=21)  # not yet
    with pytest.raises(nonfinite.Diverged, match=r"steps 5-24 were all non-finite \(20 in a row, "
                       r"config.max_nonfinite_steps = 20\); the last finite loss was 2.5, at step 4"):
        nonfinite.stop_if_diverged(step_metrics, step=24, max_in_a_row=20)
    step_metrics["train/last_finite_loss"] = np.float32(np.nan)
    with pytest.raises(nonfinite.Diverged, match="steps 1-20 .* no step was finite"):
        nonfinite.stop_if_diverged(step_metrics, step=20, max_in_a_row=20)
