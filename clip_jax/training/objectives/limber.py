"""LiMBeR's objective: next-token loss on the caption after the image prefix, only the projection trained.

    loss = sum over the global batch of -log p(tokens[b, i + 1] | prefix(image b), tokens[b, :i + 1]) / count

the same caption tokens `causal_lm` scores (`clip_jax.training.objectives.causal_lm`):
the image positions and the padding are never scored. Both towers are
frozen: their parameters enter the forward pass behind stop_gradient, so
autodiff computes no weight gradient for them (the LM's activations still
carry the gradient back to the prefix), and `Limber.locked_towers`
names 'visual' and 'text', so the optimizer holds no state for
them and the step keeps them bit for bit. The image tower runs in inference
mode: its BatchNorm statistics never change.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from clip_jax.config.errors import ConfigError, check
from clip_jax.training.objectives.causal_lm import Arrays, CausalLm, check_lm_positions, next_token_sums
from clip_jax.training.objectives.protocol import InitialWeights

FROZEN = ("visual", "text")
PREFIXES = ("grid", "pooled")


class Limber(CausalLm):
    """Batch fields "images" [B, S, S, 3] and "tokens" [B, L]; outputs as CausalLm's; no extra state."""

    model_kind: ClassVar[str] = "limber"
    eval_types: ClassVar[tuple[str, ...]] = ("captioning",)  # greedy captions scored by evaluation.caption_eval
    chains_captions: ClassVar[bool] = False  # one caption per image, after the image prefix in the first's place
    batch_fields = ("images", "tokens")

    # -- from the config alone ------------------------------------------------

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """The caption LM's checks, then config.limber: a prefix type, its size, both frozen parts named."""
        super().validate(config)
        limber = config.limber
        check(limber.prefix in PREFIXES, "limber.prefix", f"{limber.prefix!r} is not one of {PREFIXES}")
        if limber.prefix == "pooled":
            check(limber.num_prompts >= 1, "limber.num_prompts", "a pooled prefix needs num_prompts >= 1")
        else:
            check(limber.num_prompts >= 0, "limber.num_prompts", "must be 0 (the grid's size) or the grid's size")
        check(bool(limber.image_from), "limber.image_from", "LiMBeR's image tower is frozen: name CLIP weights or a run")
        check(bool(limber.lm_from), "limber.lm_from", "LiMBeR's LM is frozen: name a causal_lm run or LM weights")
        check(not config.init_from, "init_from", "LiMBeR loads its towers from config.limber.image_from and lm_from")

    @classmethod
    def create_model(cls, config: ml_collections.ConfigDict) -> tuple[nn.Module, dict[str, Any]]:
        """A `models.limber.Limber`; the overrides are `create_limber`'s arguments besides the image model's name.

        The image tower is create_model(config.model, **config.model_overrides).visual (its 'text' overrides unused).
        """
        from clip_jax.models import limber  # not at import: clip_jax.lm imports clip_jax.models

        given = {k: v for k, v in config.model_overrides.to_dict().items() if k != "text"}  # the text tower is unused
        image = {"dtype": config.dtype, "remat_policy": config.remat_policy, "scan_layers": config.scan_layers, **given}
        overrides = {
            "image_overrides": image, "lm": config.lm.name, "lm_overrides": cls.lm_overrides(config),
            "prefix": config.limber.prefix, "num_prompts": config.limber.num_prompts,
        }
        return limber.create_limber(config.model, **overrides), overrides

    @classmethod
    def model_name(cls, config: ml_collections.ConfigDict) -> str:
        return config.model

    @classmethod
    def check_model(cls, model: nn.Module, config: ml_collections.ConfigDict) -> None:
        """A grid prefix has one vector per grid cell; the LM's positions cover the prefix and the caption."""
        if config.limber.prefix == "grid":
            from clip_jax.models.limber import grid_cells

            cells = grid_cells(model.visual)
            if config.limber.num_prompts not in (0, cells):
                raise ConfigError(
                    f"config.limber.num_prompts: a grid prefix has one vector per grid cell of {config.model}, "
                    f"{cells}; set 0 (or that)"
                )
        check_lm_positions(model.text.config, config.data.context_length, prefix_length=model.prefix_length)

    @classmethod
    def locked_towers(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return FROZEN

    @classmethod
    def initial_weights(cls, config: ml_collections.ConfigDict) -> list[InitialWeights]:
        """The frozen parts; only the projection keeps its initialisation."""
        return [
            InitialWeights(config.limber.image_from, "visual", "limber.image_from"),
            InitialWeights(config.limber.lm_from, "text", "limber.lm_from"),
        ]

    # -- the train step -------------------------------------------------------

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
