"""The sharded train step: model forward, cross-device contrastive loss, optimizer update.

State is a dict {'step', 'params', 'batch_stats', 'opt_state', 'extra', 'nonfinite'}; the
step is one `jax.jit` with explicit shardings and the state donated. What the
step computes is the objective's (`clip_jax.training.objectives`: the contrastive losses,
DeCLIP): its per-example outputs come out of the model split over the batch
axes ('data', 'fsdp'), and its loss runs in a `jax.shard_map` over those axes
through the losses' `axis_name` forms, so every device's samples are negatives
for every other's; 'extra' is the objective's own state (DeCLIP's text queue).
A step whose loss, gradient or new parameters are not finite leaves the state as it
was but for the step counter and the 'nonfinite' counts (`nonfinite`); each
step also reports gradient and parameter norms and update ratios per tower
(`health`), which the loop fetches on log steps.

With `num_microbatches` M > 1 the step accumulates gradients without losing
negatives: it embeds all M micro-batches without gradients, takes the loss
gradient with respect to the outputs of the whole batch, then re-runs each
micro-batch and pushes that gradient into the parameters (a VJP), so the
gradient is the full batch's while activations are held for one micro-batch.
(BatchNorm models normalise each micro-batch with its own statistics.)
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clip_jax.config.validation import validate_batch_layout
from clip_jax.inference.images import model_inputs
from clip_jax.runtime.sharding import BATCH_AXES, activation_layout, batch_sharding, replicated
from clip_jax.training import health, nonfinite, optim
from clip_jax.training.objectives import Objective, objective_class
from clip_jax.training.objectives.flip import mask_ratios_from
from clip_jax.training.train_state import State, init_with_layout, parameter_shardings, state_shardings

Batch = dict[str, jax.Array]
# What a step hands to the log step's in-batch metrics: {"outputs": the objective's metric_outputs of the
# step's forward pass {name: [B, ...]} split over the batch axes, "scalars": the logit scalars it used}.
Probe = dict[str, dict[str, jax.Array]]


def global_loss_fn(objective: Objective, mesh: Mesh) -> Callable[..., tuple[jax.Array, dict, dict]]:
    """(outputs {name: [B, ...]}, scalars {'logit_scale', 'logit_bias'?}, extra, step) -> (loss, metrics, extra).

    Outputs are split over the batch axes and extra is laid out by the
    objective's extra_specs; the loss of the global batch and the metrics come
    back replicated.
    """

    def local(outputs, scalars, extra, step):
        return objective.loss(outputs, scalars, extra, step, BATCH_AXES)

    batch, specs = PartitionSpec(BATCH_AXES), objective.extra_specs()
    return jax.shard_map(
        local, mesh=mesh, in_specs=(batch, PartitionSpec(), specs, PartitionSpec()),
        out_specs=(PartitionSpec(), PartitionSpec(), specs),
    )


def global_metrics_fn(objective: Objective, mesh: Mesh) -> Callable[[Probe], dict[str, jax.Array]]:
    """The objective's in-batch metrics of the global batch from a step's probe, jitted; replicated scalars.

    A pass of its own over the batch's pairs (N x N logits for the contrastive objectives) that the loop
    runs on log steps only, so the other steps neither compute nor wait for it.
    """

    def local(outputs, scalars):
        return objective.in_batch_metrics(outputs, scalars, BATCH_AXES)

    metrics = jax.shard_map(
        local, mesh=mesh, in_specs=(PartitionSpec(BATCH_AXES), PartitionSpec()), out_specs=PartitionSpec()
    )
    return jax.jit(lambda probe: metrics(probe["outputs"], probe["scalars"]), out_shardings=replicated(mesh))


def scalar_params(params: Any) -> dict[str, jax.Array]:
    """The loss's own parameters: logit_scale (log of the multiplier) and logit_bias where present."""
    return {k: params[k] for k in ("logit_scale", "logit_bias") if k in params}


def _to_microbatches(x: jax.Array, num: int, mesh: Mesh) -> jax.Array:
    """[B, ...] -> [M, B/M, ...], micro-batch m holding rows m, M + m, 2M + m, ...

    Strided rows keep every micro-batch spread evenly over the devices that
    hold the batch, so no data moves between devices.
    """
    x = x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, BATCH_AXES)))


def _from_microbatches(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Inverse of `_to_microbatches`: [M, B/M, ...] -> [B, ...]."""
    x = x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))


def loss_and_grads(
    objective: Objective, mesh: Mesh, state: State, batch: Batch
) -> tuple[jax.Array, dict, Any, dict[str, Any], Probe]:
    """(loss, metrics, grads, {'batch_stats', 'extra'} after the step, probe) of the global batch, over micro-batches.

    The objective (`clip_jax.training.objectives`) prepares the step's inputs for the whole batch (FLIP's patch
    subsets with its mask_ratio > 0, DeCLIP's masked tokens), so micro-batches see what the full batch would.
    """
    global_loss = global_loss_fn(objective, mesh)
    params, batch_stats, extra, step = state["params"], state["batch_stats"], state["extra"], state["step"]
    num = objective.config.num_microbatches
    # Images stay uint8 until each (micro-)batch is embedded: a float32 copy of the whole batch is 4x its bytes.
    inputs = jax.lax.with_sharding_constraint(objective.prepare(step, batch), batch_sharding(mesh))

    def forward(params, stats, inputs):
        return objective.forward(params, stats, model_inputs(inputs))

    if num == 1:

        def total_loss(params):
            outputs, new_stats = forward(params, batch_stats, inputs)
            loss, metrics, new_extra = global_loss(outputs, scalar_params(params), extra, step)
            return loss, (metrics, {"batch_stats": new_stats, "extra": new_extra}, outputs)

        (loss, (metrics, updates, outputs)), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        return loss, metrics, grads, updates, probe(objective, outputs, params)

    microbatches = jax.tree.map(lambda x: _to_microbatches(x, num, mesh), inputs)

    def embed_microbatch(stats, microbatch):
        outputs, stats = forward(params, stats, microbatch)
        return stats, outputs

    new_stats, stacked = jax.lax.scan(embed_microbatch, batch_stats, microbatches)
    outputs = jax.tree.map(lambda x: _from_microbatches(x, mesh), stacked)
    (loss, (metrics, new_extra)), (doutputs, dscalars) = jax.value_and_grad(
        lambda outputs, scalars: (lambda l, m, e: (l, (m, e)))(*global_loss(outputs, scalars, extra, step)),
        argnums=(0, 1), has_aux=True,
    )(outputs, scalar_params(params))

    def backprop_microbatch(grads, inputs):
        microbatch, doutput = inputs
        _, vjp = jax.vjp(lambda p: forward(p, batch_stats, microbatch)[0], params)
        return jax.tree.map(jnp.add, grads, vjp(doutput)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    doutputs = jax.tree.map(lambda x: _to_microbatches(x, num, mesh), doutputs)
    grads, _ = jax.lax.scan(backprop_microbatch, zeros, (microbatches, doutputs))
    grads = {**grads, **{k: grads[k] + g for k, g in dscalars.items()}}
    return loss, metrics, grads, {"batch_stats": new_stats, "extra": new_extra}, probe(objective, outputs, params)


def probe(objective: Objective, outputs: dict[str, jax.Array], params: Any) -> Probe:
    """The step's outputs and logit scalars that `global_metrics_fn` reads, without gradients."""
    kept = {name: outputs[name] for name in objective.metric_outputs}
    return jax.lax.stop_gradient({"outputs": kept, "scalars": scalar_params(params)})


def make_train_step(
    objective: Objective, mesh: Mesh, optimizer: optax.GradientTransformation, schedule: optax.Schedule
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array], Probe]]:
    """The (unjitted) train step: state, batch -> new state, replicated scalar metrics, probe.

    The probe feeds `global_metrics_fn` on the steps that log in-batch metrics; other steps drop it.
    The objective's FLIP mask ratio is static: one compiled step per ratio.
    """
    max_log_scale = math.log(objective.config.max_logit_scale)
    locked = objective.locked

    def train_step(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array], Probe]:
        loss, metrics, grads, carried, step_probe = loss_and_grads(objective, mesh, state, batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params = {**params, **{tower: state["params"][tower] for tower in locked}}  # bit for bit, -0.0 too
        if "logit_scale" in params:  # the contrastive losses' (caption LMs have none)
            params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], max_log_scale)}
        norms = health.norms(grads, updates, params)
        # A non-finite step changes nothing but the step counter and the count of such steps.
        finite = nonfinite.is_finite(loss, norms["grad_norm"], norms["param_norm"])
        proposed = {"params": params, "opt_state": opt_state, **carried}
        kept = nonfinite.hold_back(finite, proposed, {name: state[name] for name in proposed})
        counters = nonfinite.count(state["nonfinite"], finite, loss)
        metrics = {
            **metrics,
            "loss": loss,
            **norms,
            **nonfinite.metrics(counters),
            "learning_rate": schedule(state["step"]),
            **({"logit_scale": jnp.exp(kept["params"]["logit_scale"])} if "logit_scale" in params else {}),
            **({"logit_bias": kept["params"]["logit_bias"]} if "logit_bias" in params else {}),
        }
        new_state = {"step": state["step"] + 1, **kept, "nonfinite": counters}
        return new_state, metrics, step_probe

    return train_step


def jit_train_step(
    step_fn: Callable, state_shardings: Any, mesh: Mesh
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array], Probe]]:
    """One jit with explicit in/out shardings and the state donated."""
    probe_shardings = {"outputs": batch_sharding(mesh), "scalars": replicated(mesh)}
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh), probe_shardings),
        donate_argnums=0,
    )


class TrainingPlan(NamedTuple):
    """Everything a run's train steps are made of, before any step is compiled."""

    mesh: Mesh
    optimizer: optax.GradientTransformation
    # FLIP's mask ratio -> the objective that masks with it, one for each ratio the run's steps use
    objectives: dict[float, Objective]
    init: Callable[[jax.Array], State]  # rng -> fresh state, laid out (jitted: compiles on its first call)
    abstract_state: State  # ShapeDtypeStructs with shardings: the restore target
    abstract_batch: Batch  # ShapeDtypeStructs with shardings of a global batch

    def jitted_step(self, mask_ratio: float) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array], Probe]]:
        """The jitted train step of `mask_ratio`'s objective; lower it under `activation_layout(plan.mesh)`."""
        objective = self.objectives[mask_ratio]
        schedule = optim.learning_rate_schedule(objective.config)
        step_fn = make_train_step(objective, self.mesh, self.optimizer, schedule)
        return jit_train_step(step_fn, state_shardings(self.abstract_state), self.mesh)


class CompiledTraining(NamedTuple):
    """What a training run compiles before its first step."""

    init: Callable[[jax.Array], State]  # rng -> fresh state
    abstract_state: State  # ShapeDtypeStructs with shardings: the restore target
    # FLIP's mask ratio -> the compiled step that masks with it, one for each ratio the run's steps use
    steps: dict[float, Callable[[State, Batch], tuple[State, dict[str, jax.Array], Probe]]]
    abstract_batch: Batch  # ShapeDtypeStructs with shardings of a global batch
    in_batch_metrics: Callable[[Probe], dict[str, jax.Array]]  # a step's probe -> its in-batch metrics

    @property
    def step(self) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array], Probe]]:
        """The compiled step of the run's first step."""
        return next(iter(self.steps.values()))


def plan_training(
    model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh, rng: jax.Array, start_step: int = 0
) -> TrainingPlan:
    """Checks the model and the batch layout, builds the optimizer and the objectives once, and lays out the
    state and a batch of config.batch_size over `mesh` (nothing compiled or allocated).

    One objective is made for each FLIP mask ratio the steps from `start_step` to config.total_steps use.
    """
    method = objective_class(config)
    validate_batch_layout(config, mesh.shape["data"] * mesh.shape["fsdp"])
    method.check_model(model, config)
    optimizer = optim.make_optimizer(config, method.locked_towers(config))
    objectives = {ratio: method(model, config, ratio) for ratio in mask_ratios_from(config, start_step)}
    objective = next(iter(objectives.values()))
    init, abstract_state = init_with_layout(objective, optimizer, parameter_shardings(objective, mesh), mesh, rng)
    batch = batch_sharding(mesh)
    abstract_batch = {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch) for name, (shape, dtype) in objective.batch_shapes().items()
    }
    return TrainingPlan(mesh, optimizer, objectives, init, abstract_state, abstract_batch)


def compile_training(
    model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh, rng: jax.Array, start_step: int = 0
) -> CompiledTraining:
    """The plan's init and one compiled step for each of its FLIP mask ratios, so the loop never compiles."""
    plan = plan_training(model, config, mesh, rng, start_step)
    steps = {}
    for ratio in plan.objectives:
        with activation_layout(mesh):  # the model's `constrain` calls pin activations while tracing
            steps[ratio] = plan.jitted_step(ratio).lower(plan.abstract_state, plan.abstract_batch).compile()
    metrics = global_metrics_fn(next(iter(plan.objectives.values())), mesh)
    return CompiledTraining(plan.init, plan.abstract_state, steps, plan.abstract_batch, metrics)
