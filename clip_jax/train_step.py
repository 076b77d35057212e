"""The sharded train step: model forward, cross-device contrastive loss, optimizer update.

State is a dict {'step', 'params', 'batch_stats', 'opt_state'}; the step is one
`jax.jit` with explicit shardings and the state donated. Embeddings come out of
the model split over the batch axes ('data', 'fsdp'); the loss runs in a
`jax.shard_map` over those axes through the losses' `axis_name` forms, so every
device's samples are negatives for every other's.

With `num_microbatches` M > 1 the step accumulates gradients without losing
negatives: it embeds all M micro-batches without gradients, takes the loss
gradient with respect to the embeddings of the whole batch, then re-runs each
micro-batch and pushes that gradient into the parameters (a VJP), so the
gradient is the full batch's while activations are held for one micro-batch.
(BatchNorm models normalise each micro-batch with its own statistics.)
"""
from __future__ import annotations

import math
from typing import Any, Callable, Collection, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from clip_jax import config as config_lib
from clip_jax import flip, losses, optim
from clip_jax.sharding import BATCH_AXES, batch_sharding, replicated
from clip_jax.train_state import State, compile_init, parameter_shardings, state_shardings

Batch = dict[str, jax.Array]
TOWER_OUTPUTS = (("image_embeds", "visual"), ("text_embeds", "text"))  # the model's outputs and their towers


def loss_function(config: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """(image_embeds, text_embeds, logit_scale, logit_bias, axis_name) -> scalar loss, by config.loss.

    config.loss_impl and loss_block_size pick how clip and siglip form their
    logits; clip_lite exchanges one caption with the neighbouring device and
    has a single O(n d) form, the same under either loss_impl.
    """
    if config.loss == "clip":
        return lambda x, y, scale, bias, axis_name: losses.clip_loss(
            x, y, scale, axis_name, impl=config.loss_impl, block_size=config.loss_block_size
        )
    if config.loss == "siglip":
        return lambda x, y, scale, bias, axis_name: losses.sigmoid_loss(
            x, y, scale, bias, axis_name, impl=config.loss_impl, block_size=config.loss_block_size
        )
    if config.loss == "clip_lite":
        return lambda x, y, scale, bias, axis_name: losses.clip_lite_loss(x, y, scale, axis_name)
    raise ValueError(f"config.loss: unknown loss {config.loss!r}")


def check_model_fits_loss(model: nn.Module, config: ml_collections.ConfigDict) -> None:
    """Raises ValueError when config.loss needs a logit_bias the model lacks, or the model has one it would ignore."""
    needs_bias = config_lib.LOSS_LOGIT_INIT[config.loss][1] is not None
    has_bias = model.init_logit_bias is not None
    if needs_bias and not has_bias:
        raise ValueError(
            f"config.loss: {config.loss} needs a model with a logit_bias "
            "(model_config.model_from_config(config) or create_model(..., init_logit_bias=...))"
        )
    if has_bias and not needs_bias:
        raise ValueError(f"config.loss: {config.loss} has no logit bias, but the model has a logit_bias parameter")


def global_loss_fn(config: ml_collections.ConfigDict, mesh: Mesh) -> Callable[..., tuple[jax.Array, dict]]:
    """(image_embeds [B, E], text_embeds [B, E], scalars {'logit_scale', 'logit_bias'?}) -> (loss, metrics).

    Embeddings are split over the batch axes; the loss of the global batch and
    the in-batch metrics come back replicated.
    """
    loss = loss_function(config)
    block_size = config.loss_block_size

    def local(image_embeds, text_embeds, scalars):
        scale = jnp.exp(scalars["logit_scale"])
        bias = scalars.get("logit_bias")
        value = loss(image_embeds, text_embeds, scale, bias, BATCH_AXES)
        metrics = losses.contrastive_metrics(
            image_embeds, text_embeds, scale, bias, BATCH_AXES, block_size=math.gcd(block_size, image_embeds.shape[0])
        )
        return value, metrics

    batch = PartitionSpec(BATCH_AXES)
    return jax.shard_map(local, mesh=mesh, in_specs=(batch, batch, PartitionSpec()), out_specs=PartitionSpec())


def scalar_params(params: Any) -> dict[str, jax.Array]:
    """The loss's own parameters: logit_scale (log of the multiplier) and logit_bias where present."""
    return {k: params[k] for k in ("logit_scale", "logit_bias") if k in params}


def make_embed_fn(
    model: nn.Module, locked: Collection[str] = ()
) -> Callable[..., tuple[tuple[jax.Array, jax.Array], Any]]:
    """(params, batch_stats, images, tokens, keep_patches=None) -> ((image_embeds, text_embeds), new batch_stats).

    Embeddings are L2-normalized; keep_patches [B, K]: FLIP's kept patch tokens (None: whole images).

    The embeddings of a `locked` tower ('visual', 'text') are constants to autodiff, so no backward
    pass runs through it; a locked image tower runs in inference mode (BatchNorm statistics unchanged).
    """

    def embed(params, batch_stats, images, tokens, keep_patches=None):
        if batch_stats and "visual" in locked:
            variables = {"params": params, "batch_stats": batch_stats}
            out = model.apply(variables, images, tokens, keep_patches=keep_patches)
        elif batch_stats:
            out, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, tokens, train=True, mutable=["batch_stats"],
                keep_patches=keep_patches,
            )
            batch_stats = updates["batch_stats"]
        else:
            out = model.apply({"params": params}, images, tokens, keep_patches=keep_patches)
        x, y = (jax.lax.stop_gradient(out[k]) if tower in locked else out[k] for k, tower in TOWER_OUTPUTS)
        return (x, y), batch_stats

    return embed


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
    model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh, state: State, batch: Batch, mask_ratio: float = 0.0
) -> tuple[jax.Array, dict, Any, Any]:
    """(loss, metrics, grads, new batch_stats) of the global batch, accumulated over micro-batches.

    With mask_ratio > 0 the image tower sees FLIP's random patch subsets of this step (`clip_jax.flip`),
    drawn for the whole batch, so micro-batches keep the tokens the full batch would.
    """
    embed = make_embed_fn(model, config_lib.locked_towers(config))
    global_loss = global_loss_fn(config, mesh)
    params, batch_stats = state["params"], state["batch_stats"]
    num = config.num_microbatches
    keep = None
    if mask_ratio:
        keep = flip.kept_patches(model, config.seed, state["step"], config.batch_size, mask_ratio)
        keep = jax.lax.with_sharding_constraint(keep, batch_sharding(mesh))  # [B, K]

    if num == 1:

        def total_loss(params):
            (x, y), new_stats = embed(params, batch_stats, batch["images"], batch["tokens"], keep)
            loss, metrics = global_loss(x, y, scalar_params(params))
            return loss, (metrics, new_stats)

        (loss, (metrics, new_stats)), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        return loss, metrics, grads, new_stats

    images = _to_microbatches(batch["images"], num, mesh)
    tokens = _to_microbatches(batch["tokens"], num, mesh)
    keeps = None if keep is None else _to_microbatches(keep, num, mesh)

    def embed_microbatch(stats, inputs):
        embeddings, stats = embed(params, stats, *inputs)
        return stats, embeddings

    new_stats, (xs, ys) = jax.lax.scan(embed_microbatch, batch_stats, (images, tokens, keeps))
    x, y = _from_microbatches(xs, mesh), _from_microbatches(ys, mesh)
    (loss, metrics), (dx, dy, dscalars) = jax.value_and_grad(global_loss, argnums=(0, 1, 2), has_aux=True)(
        x, y, scalar_params(params)
    )

    def backprop_microbatch(grads, inputs):
        mb_images, mb_tokens, mb_keep, mb_dx, mb_dy = inputs
        _, vjp = jax.vjp(lambda p: embed(p, batch_stats, mb_images, mb_tokens, mb_keep)[0], params)
        return jax.tree.map(jnp.add, grads, vjp((mb_dx, mb_dy))[0]), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(
        backprop_microbatch,
        zeros,
        (images, tokens, keeps, _to_microbatches(dx, num, mesh), _to_microbatches(dy, num, mesh)),
    )
    grads = {**grads, **{k: grads[k] + g for k, g in dscalars.items()}}
    return loss, metrics, grads, new_stats


def make_train_step(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mask_ratio: float = 0.0,
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """The (unjitted) train step: state, batch -> new state, replicated scalar metrics.

    mask_ratio: FLIP's patch masking of the image tower (static: one compiled step per ratio).
    """
    max_log_scale = math.log(config.max_logit_scale)
    locked = config_lib.locked_towers(config)

    def train_step(state: State, batch: Batch) -> tuple[State, dict[str, jax.Array]]:
        loss, metrics, grads, batch_stats = loss_and_grads(model, config, mesh, state, batch, mask_ratio)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params = {**params, **{tower: state["params"][tower] for tower in locked}}  # bit for bit, -0.0 too
        params = {**params, "logit_scale": jnp.minimum(params["logit_scale"], max_log_scale)}
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": schedule(state["step"]),
            "logit_scale": jnp.exp(params["logit_scale"]),
            **({"logit_bias": params["logit_bias"]} if "logit_bias" in params else {}),
        }
        new_state = {"step": state["step"] + 1, "params": params, "batch_stats": batch_stats, "opt_state": opt_state}
        return new_state, metrics

    return train_step


def jit_train_step(
    step_fn: Callable, state_shardings: Any, mesh: Mesh
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """One jit with explicit in/out shardings and the state donated."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=0,
    )



class CompiledTraining(NamedTuple):
    """What a training run compiles before its first step."""

    init: Callable[[jax.Array], State]  # rng -> fresh state
    abstract_state: State  # ShapeDtypeStructs with shardings: the restore target
    step: Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]
    abstract_batch: Batch  # ShapeDtypeStructs with shardings of a global batch


def compile_step(
    model: nn.Module,
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    abstract_state: State,
    abstract_batch: Batch,
    mask_ratio: float = 0.0,
) -> Callable[[State, Batch], tuple[State, dict[str, jax.Array]]]:
    """The compiled train step for `abstract_state` / `abstract_batch` with FLIP's `mask_ratio` (0: whole images)."""
    step_fn = jit_train_step(
        make_train_step(
            model, config, mesh, optim.make_optimizer(config), optim.learning_rate_schedule(config), mask_ratio
        ),
        state_shardings(abstract_state),
        mesh,
    )
    return step_fn.lower(abstract_state, abstract_batch).compile()


def compile_training(
    model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh, rng: jax.Array, mask_ratio: float | None = None
) -> CompiledTraining:
    """Lays out the state over `mesh` and compiles init and the train step for config.batch_size.

    The step masks with `mask_ratio`; None: config.flip.mask_ratio. A run that
    changes ratio (FLIP's unmasked tuning) compiles its next step with `compile_step`.
    """
    config_lib.validate_batch_layout(config, mesh.shape["data"] * mesh.shape["fsdp"])
    check_model_fits_loss(model, config)
    optimizer = optim.make_optimizer(config)
    image_size, context_length = model.visual.image_size, config.data.context_length
    shardings = parameter_shardings(model, context_length, mesh)
    init, abstract_state = compile_init(model, optimizer, image_size, context_length, shardings, mesh, rng)
    batch = batch_sharding(mesh)
    abstract_batch = {
        "images": jax.ShapeDtypeStruct((config.batch_size, image_size, image_size, 3), jnp.float32, sharding=batch),
        "tokens": jax.ShapeDtypeStruct((config.batch_size, context_length), jnp.int32, sharding=batch),
    }
    ratio = config.flip.mask_ratio if mask_ratio is None else mask_ratio
    step = compile_step(model, config, mesh, abstract_state, abstract_batch, ratio)
    return CompiledTraining(init, abstract_state, step, abstract_batch)
