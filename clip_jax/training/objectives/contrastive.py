"""The two-tower contrastive objective: clip, siglip or clip_lite on the towers' embeddings.

FLIP's patch masking and LiT's locked towers are part of it; CLIP-Lite's
critic heads are part of the model (`clip_jax.models.critic`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec

from clip_jax import config as config_lib, losses
from clip_jax.inference.images import model_inputs
from clip_jax.losses.common import AxisName
from clip_jax.training.objectives import flip

Arrays = dict[str, jax.Array]
TOWER_OUTPUTS = (("image_embeds", "visual"), ("text_embeds", "text"))  # the model's outputs and their towers


def loss_function(config: ml_collections.ConfigDict) -> Callable[..., jax.Array]:
    """(image_embeds, text_embeds, logit_scale, logit_bias, axis_name) -> scalar loss, by config.loss.

    config.loss_impl and loss_block_size pick how clip and siglip form their
    logits, and how clip_lite scores the captions for its "hardest" negatives;
    its "shifted" negatives exchange one caption with the neighbouring device,
    O(n d) under either loss_impl.
    """
    if config.loss in ("clip", "declip"):
        return lambda x, y, scale, bias, axis_name: losses.clip_loss(
            x, y, scale, axis_name, impl=config.loss_impl, block_size=config.loss_block_size
        )
    if config.loss == "siglip":
        return lambda x, y, scale, bias, axis_name: losses.sigmoid_loss(
            x, y, scale, bias, axis_name, impl=config.loss_impl, block_size=config.loss_block_size
        )
    if config.loss == "clip_lite":
        block_size = config.loss_block_size if config.loss_impl == "blockwise" else None
        return lambda x, y, scale, bias, axis_name: losses.clip_lite_loss(
            x, y, scale, axis_name, negatives=config.clip_lite.negatives, block_size=block_size
        )
    raise ValueError(f"config.loss: unknown loss {config.loss!r}")


class Contrastive:
    """Images and captions through the two towers, the contrastive loss of config.loss across devices.

    Batch fields: "images" uint8 [B, S, S, 3] (pixels, normalized in the step), "tokens" [B, L]. Outputs: "image_embeds" and
    "text_embeds" [B, E], L2-normalized. No extra state.
    """

    batch_fields: tuple[str, ...] = ("images", "tokens")
    metric_outputs: tuple[str, ...] = ("image_embeds", "text_embeds")  # what `in_batch_metrics` reads

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0):
        self.model, self.config, self.mask_ratio = model, config, mask_ratio
        self.locked = config_lib.locked_towers(config)
        self.pair_loss = loss_function(config)

    # -- shapes and state -----------------------------------------------------

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Each batch field's global (shape, dtype)."""
        size, length = self.model.visual.image_size, self.config.data.context_length
        images = ((self.config.batch_size, size, size, 3), jnp.uint8)
        tokens = ((self.config.batch_size, length), jnp.int32)
        return {name: images if name.startswith("images") else tokens for name in self.batch_fields}

    def one_example_batch(self) -> Arrays:
        """Model inputs shaped as one example of every batch field (zeros, images normalized): what init traces."""
        return model_inputs({name: jnp.zeros((1, *shape[1:]), dtype) for name, (shape, dtype) in self.batch_shapes().items()})

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """The model's variables ({'params', maybe 'batch_stats'}, boxed with logical axes) from a one-example batch."""
        dummy = self.one_example_batch()
        return self.model.init(rng, dummy["images"], dummy["tokens"])

    def init_extra(self) -> Arrays:
        """State the objective carries from step to step besides parameters (global arrays)."""
        return {}

    def extra_specs(self) -> dict[str, PartitionSpec]:
        """How each extra array is laid out over the mesh."""
        return {}

    # -- the step -------------------------------------------------------------

    def prepare(self, step: jax.Array, batch: Arrays) -> Arrays:
        """Per-example model inputs of the global batch; FLIP's kept patches [B, K] when masking."""
        inputs = {name: batch[name] for name in self.batch_fields}
        if self.mask_ratio:
            inputs["keep_patches"] = flip.kept_patches(
                self.model, self.config.seed, step, self.config.batch_size, self.mask_ratio
            )
        return inputs

    def forward(self, params: Any, batch_stats: Any, inputs: Arrays) -> tuple[Arrays, Any]:
        """(outputs, new batch_stats) of a (micro-)batch.

        The embeddings of a locked tower ('visual', 'text') are constants to autodiff, so no backward pass
        runs through it; a locked image tower runs in inference mode (BatchNorm statistics unchanged).
        """
        images, tokens, keep = inputs["images"], inputs["tokens"], inputs.get("keep_patches")
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        if batch_stats and "visual" not in self.locked:
            out, updates = self.model.apply(
                variables, images, tokens, train=True, mutable=["batch_stats"], keep_patches=keep
            )
            batch_stats = updates["batch_stats"]
        else:
            out = self.model.apply(variables, images, tokens, keep_patches=keep)
        outputs = {k: jax.lax.stop_gradient(out[k]) if tower in self.locked else out[k] for k, tower in TOWER_OUTPUTS}
        return outputs, batch_stats

    def loss(
        self, outputs: Arrays, scalars: Arrays, extra: Arrays, step: jax.Array, axis_name: AxisName
    ) -> tuple[jax.Array, Arrays, Arrays]:
        """(loss of the global batch, metrics, new extra) from this device's rows of the outputs."""
        scale = jnp.exp(scalars["logit_scale"])
        value = self.pair_loss(outputs["image_embeds"], outputs["text_embeds"], scale, scalars.get("logit_bias"), axis_name)
        return value, {}, extra

    def in_batch_metrics(self, outputs: Arrays, scalars: Arrays, axis_name: AxisName) -> Arrays:
        """In-batch retrieval metrics over the global batch from this device's rows of `metric_outputs` [n, E].

        A second pass over the batch's N x N logits: the loop runs it on log steps only, from the step's outputs.
        """
        x, y = outputs["image_embeds"], outputs["text_embeds"]
        block_size = math.gcd(self.config.loss_block_size, x.shape[0])
        return losses.contrastive_metrics(
            x, y, jnp.exp(scalars["logit_scale"]), scalars.get("logit_bias"), axis_name, block_size=block_size
        )
