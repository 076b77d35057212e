"""The two-tower contrastive objectives: clip (InfoNCE), siglip (pairwise sigmoid), clip_lite.

`Contrastive` holds what they share: the towers' embeddings of images and
captions, FLIP's patch masking, LiT's locked towers, the logit scalars and
the in-batch metrics. A subclass names its `pair_loss` and its initial
logit scalars; CLIP-Lite's critic heads are part of the model
(`clip_jax.models.critic`), DeCLIP (`declip`) extends `Clip`.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec

from clip_jax import losses
from clip_jax.config.errors import ConfigError, check
from clip_jax.evaluation import EVAL_TYPES
from clip_jax.inference.images import model_inputs
from clip_jax.losses.common import AxisName
from clip_jax.models import CLIP, create_model, model_spec
from clip_jax.tokenizers import get_tokenizer
from clip_jax.training.objectives import flip
from clip_jax.training.objectives.protocol import (
    Arrays, InitialWeights, init_from_weights, lit_locked_towers,
)

TOWER_OUTPUTS = (("image_embeds", "visual"), ("text_embeds", "text"))  # the model's outputs and their towers
CLIP_LITE_NEGATIVES = ("shifted", "hardest")


class Contrastive:
    """Images and captions through the two towers, a pair loss of their embeddings across devices.

    Batch fields: "images" uint8 [B, S, S, 3] (pixels, normalized in the step), "tokens" [B, L]. Outputs: "image_embeds" and
    "text_embeds" [B, E], L2-normalized. No extra state.
    """

    model_kind: ClassVar[str] = "clip"
    eval_types: ClassVar[tuple[str, ...]] = EVAL_TYPES
    pipeline_options: ClassVar[dict[str, Any]] = {}
    chains_captions: ClassVar[bool] = False
    # (logit scale, logit bias) where config.init_logit_* is None; the scale is the log of the multiplier,
    # as create_model's init_logit_scale; a bias of None: the model has no logit_bias parameter.
    logit_init: ClassVar[tuple[float, float | None]] = (CLIP.init_logit_scale, None)  # log(1/0.07), OpenAI's
    extra_tokens: ClassVar[int] = 0  # token ids the text tower has beyond the tokenizer's
    batch_fields: tuple[str, ...] = ("images", "tokens")
    metric_outputs: tuple[str, ...] = ("image_embeds", "text_embeds")  # what `in_batch_metrics` reads

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0):
        self.model, self.config, self.mask_ratio = model, config, mask_ratio
        self.locked = self.locked_towers(config)

    def pair_loss(
        self, x: jax.Array, y: jax.Array, scale: jax.Array, bias: jax.Array | None, axis_name: AxisName
    ) -> jax.Array:
        """The scalar loss of the global batch from this device's image and text embeddings [n, E]."""
        raise NotImplementedError

    # -- from the config alone ------------------------------------------------

    @classmethod
    def initial_logit_scale(cls, config: ml_collections.ConfigDict) -> float:
        """The logit scale (log of the multiplier) the model starts from."""
        return config.init_logit_scale if config.init_logit_scale is not None else cls.logit_init[0]

    @classmethod
    def initial_logit_bias(cls, config: ml_collections.ConfigDict) -> float | None:
        """The logit bias the model starts from; None: the model has no logit_bias parameter."""
        return config.init_logit_bias if config.init_logit_bias is not None else cls.logit_init[1]

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """init_logit_scale / init_logit_bias: set only here, finite, within max_logit_scale, a bias only where used."""
        for field in ("init_logit_scale", "init_logit_bias"):
            check(field not in config.model_overrides, f"model_overrides.{field}", f"set config.{field} instead")
            value = config[field]
            check(value is None or math.isfinite(value), field, f"must be finite or None, got {value}")
        scale = cls.initial_logit_scale(config)
        check(
            scale <= math.log(config.max_logit_scale),
            "init_logit_scale" if config.init_logit_scale is not None else "max_logit_scale",
            f"the initial multiplier exp({scale:.4g}) exceeds max_logit_scale {config.max_logit_scale} "
            "(init_logit_scale is the log of the multiplier)",
        )
        check(
            config.init_logit_bias is None or cls.logit_init[1] is not None,
            "init_logit_bias",
            f"the {config.loss} loss has no logit bias; leave it None (only siglip uses one)",
        )

    @classmethod
    def compares_all_pairs(cls, config: ml_collections.ConfigDict) -> bool:
        """Whether the loss compares every pair of the global batch (in tiles of loss_block_size)."""
        return True

    @classmethod
    def validate_batch_layout(cls, config: ml_collections.ConfigDict, batch_shards: int) -> None:
        """A blockwise loss's tiles split the per-device batch."""
        local = config.batch_size // batch_shards  # the loss sees the whole batch, also with micro-batches
        if config.loss_impl == "blockwise" and cls.compares_all_pairs(config):
            check(
                local % min(config.loss_block_size, local) == 0,
                "loss_block_size",
                f"{config.loss_block_size} must divide the per-device batch {local} "
                f"(batch_size / {batch_shards} batch shards) or be at least it",
            )

    @classmethod
    def head_overrides(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """create_model overrides for the method's own heads."""
        return {}

    @classmethod
    def model_overrides(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The create_model overrides of config.model that the config asks for.

        The text tower takes the tokenizer's vocabulary size (a SentencePiece
        model's, or CLIP's BPE in a tower made for another vocabulary), plus the
        method's `extra_tokens`. With a tokenizer other than CLIP's BPE, a tower
        that pools at CLIP's EOT (the largest id) pools at the last non-pad token
        instead; SigLIP's tower, read at its last position, keeps its pooling.
        config.model_overrides.text has the last word.
        """
        overrides = {
            "dtype": config.dtype,
            "remat_policy": config.remat_policy,
            "scan_layers": config.scan_layers,
            "init_logit_scale": float(cls.initial_logit_scale(config)),
            **({} if cls.initial_logit_bias(config) is None else {"init_logit_bias": float(cls.initial_logit_bias(config))}),
            **cls.head_overrides(config),
            **config.model_overrides.to_dict(),
        }
        spec = model_spec(config.model)
        vocab_size = get_tokenizer(config.data.tokenizer, config.data.context_length).vocab_size
        if config.data.tokenizer != "clip" or cls.extra_tokens or vocab_size != spec.text.vocab_size:
            text = {}
            if config.data.tokenizer != "clip" and spec.text.pool_type == "argmax":
                text["pool_type"] = "last"
            overrides["text"] = {"vocab_size": vocab_size + cls.extra_tokens, **text, **overrides.get("text", {})}
        return overrides

    @classmethod
    def create_model(cls, config: ml_collections.ConfigDict) -> tuple[nn.Module, dict[str, Any]]:
        overrides = cls.model_overrides(config)
        return create_model(config.model, **overrides), overrides

    @classmethod
    def model_name(cls, config: ml_collections.ConfigDict) -> str:
        return config.model

    @classmethod
    def check_model(cls, model: nn.Module, config: ml_collections.ConfigDict) -> None:
        """The model has a logit_bias exactly when the loss uses one; the captions fit its text context."""
        needs_bias, has_bias = cls.logit_init[1] is not None, model.init_logit_bias is not None
        if needs_bias and not has_bias:
            raise ValueError(
                f"config.loss: {config.loss} needs a model with a logit_bias "
                "(objectives.model_from_config(config) or create_model(..., init_logit_bias=...))"
            )
        if has_bias and not needs_bias:
            raise ValueError(f"config.loss: {config.loss} has no logit bias, but the model has a logit_bias parameter")
        if config.data.context_length > model.text.context_length:
            raise ConfigError(
                f"config.data.context_length: {config.data.context_length} exceeds the model's {model.text.context_length}"
            )

    @classmethod
    def locked_towers(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return lit_locked_towers(config)

    @classmethod
    def initial_weights(cls, config: ml_collections.ConfigDict) -> list[InitialWeights]:
        return init_from_weights(config)

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


class Clip(Contrastive):
    """CLIP's symmetric InfoNCE (Radford et al. 2021)."""

    def pair_loss(self, x, y, scale, bias, axis_name):
        c = self.config
        return losses.clip_loss(x, y, scale, axis_name, impl=c.loss_impl, block_size=c.loss_block_size)


class Siglip(Contrastive):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023), with a logit bias: multiplier 10, bias -10 to start."""

    logit_init = (math.log(10.0), -10.0)

    def pair_loss(self, x, y, scale, bias, axis_name):
        c = self.config
        return losses.sigmoid_loss(x, y, scale, bias, axis_name, impl=c.loss_impl, block_size=c.loss_block_size)


class ClipLite(Contrastive):
    """CLIP-Lite (Shrivastava et al. 2021): one negative caption per image, critic heads of config.clip_lite.

    Its "shifted" negatives exchange one caption with the neighbouring device, O(n d) under either
    loss_impl; its "hardest" negatives score the captions of the global batch in loss_block_size tiles.
    """

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """clip_lite.negatives one of CLIP_LITE_NEGATIVES; critic heads only where both towers train."""
        super().validate(config)
        lite = config.clip_lite
        check(lite.negatives in CLIP_LITE_NEGATIVES, "clip_lite.negatives", f"{lite.negatives!r} is not one of {CLIP_LITE_NEGATIVES}")
        check(lite.critic_dim >= 0, "clip_lite.critic_dim", "must be >= 0 (0: no critic heads)")
        check(
            not (lite.critic_dim and cls.locked_towers(config)),
            "clip_lite.critic_dim",
            "critic heads train together with both towers; set it to 0 when config.lit locks a tower",
        )

    @classmethod
    def compares_all_pairs(cls, config: ml_collections.ConfigDict) -> bool:
        return config.clip_lite.negatives == "hardest"

    @classmethod
    def head_overrides(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        return {"critic_dim": config.clip_lite.critic_dim} if config.clip_lite.critic_dim else {}

    def pair_loss(self, x, y, scale, bias, axis_name):
        c = self.config
        block_size = c.loss_block_size if c.loss_impl == "blockwise" else None
        return losses.clip_lite_loss(x, y, scale, axis_name, negatives=c.clip_lite.negatives, block_size=block_size)
