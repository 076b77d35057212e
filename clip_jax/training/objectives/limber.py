"""LiMBeR's objective: next-token loss on the caption after the image prefix, only the projection trained.

    loss = sum over the global batch of -log p(tokens[b, i + 1] | prefix(image b), tokens[b, :i + 1]) / count

the same caption tokens `causal_lm` scores (`clip_jax.training.objectives.causal_lm`):
the image positions and the padding are never scored. Both towers are
frozen: their parameters enter the forward pass behind stop_gradient, so
autodiff computes no weight gradient for them (the LM's activations still
carry the gradient back to the prefix), and `config_lib.locked_towers`
names 'visual' and 'text' for LiMBeR, so the optimizer holds no state for
them and the step keeps them bit for bit. The image tower runs in inference
mode: its BatchNorm statistics never change.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clip_jax.training.objectives.causal_lm import Arrays, CausalLm, next_token_sums

FROZEN = ("visual", "text")


class Limber(CausalLm):
    """Batch fields "images" [B, S, S, 3] and "tokens" [B, L]; outputs as CausalLm's; no extra state."""

    batch_fields = ("images", "tokens")
    locked = FROZEN

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0):
        super().__init__(model, config, mask_ratio)

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        size = self.model.visual.image_size
        return {"images": ((self.config.batch_size, size, size, 3), jnp.uint8), **super().batch_shapes()}

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        dummy = self.one_example_batch()
        return self.model.init(rng, dummy["images"], dummy["tokens"])

    def forward(self, params: Any, batch_stats: Any, inputs: Arrays) -> tuple[Arrays, Any]:
        params = {**params, **{name: jax.lax.stop_gradient(params[name]) for name in FROZEN}}
        variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        logits = self.model.apply(variables, inputs["images"], inputs["tokens"])
        return next_token_sums(logits, inputs["tokens"]), batch_stats
