"""Next-token prediction on captions: "causal_lm" trains a caption LM from scratch (`models.limber.CaptionLM`).

    loss = sum over the global batch of -log p(tokens[b, i + 1] | tokens[b, :i + 1])  /  number of those tokens

over every caption token after the first (CLIP BPE's start-of-text is the
prompt, padding (id 0) is left out). `forward` returns each example's sum
and count and `loss` divides their global sums (psum over the batch axes),
so the loss is that of the whole batch, the same for any device count and
micro-batching. Metrics: `token_accuracy` (argmax = target, over the same
tokens) and `tokens` (how many were scored). LiMBeR
(`clip_jax.training.objectives.limber`) scores the same tokens after an image prefix.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec

from clip_jax.config.errors import ConfigError, check
from clip_jax.inference.images import model_inputs
from clip_jax.lm import LMConfig, list_lms
from clip_jax.losses.common import AxisName, psum
from clip_jax.losses.declip import masked_lm_sums
from clip_jax.tokenizers import get_tokenizer
from clip_jax.training.objectives.protocol import InitialWeights, init_from_weights

Arrays = dict[str, jax.Array]
PAD_ID = 0
# A caption LM's prompt is its tokenizer's start token: CLIP BPE's SOT, or GPT-2's <|endoftext|> ("gpt2:DIR").
LM_TOKENIZERS = ("clip", "gpt2:DIR")


def next_token_sums(logits: jax.Array, tokens: jax.Array) -> Arrays:
    """Per-example sums of a caption's next-token terms.

    logits [B, L - 1, V] (row i predicts tokens[:, i + 1]), tokens [B, L] ->
    "loss_sum" (cross-entropy), "correct" (argmax hits) and "count" (tokens
    scored: the non-padding ones after the first), each float32 [B].
    """
    targets = tokens[:, 1:]
    weights = (targets != PAD_ID).astype(jnp.float32)
    loss_sum, count = masked_lm_sums(logits, targets, weights)
    hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    correct = jax.lax.stop_gradient(jnp.sum(hits * weights, axis=-1))
    return {"loss_sum": loss_sum, "correct": correct, "count": jax.lax.stop_gradient(count)}


def mean_next_token_loss(outputs: Arrays, axis_name: AxisName) -> tuple[jax.Array, Arrays]:
    """(mean cross-entropy per scored token of the global batch, metrics) from this device's per-example sums."""
    count = psum(jnp.sum(outputs["count"]), axis_name)
    denominator = jnp.maximum(count, 1.0)
    loss = psum(jnp.sum(outputs["loss_sum"]), axis_name) / denominator
    accuracy = psum(jnp.sum(outputs["correct"]), axis_name) / denominator
    return loss, {"token_accuracy": accuracy, "tokens": count}


def check_lm_positions(lm: LMConfig, context_length: int, prefix_length: int) -> None:
    """Raises ConfigError when the LM's learned positions do not cover the prefix and the caption tokens it reads."""
    needed = context_length - 1 + prefix_length
    if lm.positions == "learned" and needed > lm.max_positions:
        prefix = f" after {prefix_length} prefix vectors" if prefix_length else ""
        raise ConfigError(
            f"config.data.context_length: the LM reads {context_length - 1} caption tokens{prefix}, {needed} positions, "
            f"but has {lm.max_positions} learned ones; raise config.lm.overrides.max_positions or shorten the captions"
        )


class CausalLm:
    """A caption LM alone. Batch field "tokens" [B, L]; outputs "loss_sum", "correct", "count" [B]; no extra state."""

    model_kind: ClassVar[str] = "causal_lm"
    eval_types: ClassVar[tuple[str, ...]] = ()  # it trains on captions alone, without images
    pipeline_options: ClassVar[dict[str, Any]] = {}
    chains_captions: ClassVar[bool] = True
    batch_fields: tuple[str, ...] = ("tokens",)
    metric_outputs: tuple[str, ...] = ()  # its metrics come with the loss

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0):
        del mask_ratio  # FLIP masks image patches; there are none here
        self.model, self.config = model, config
        self.locked = self.locked_towers(config)

    # -- from the config alone ------------------------------------------------

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """config.lm for a next-token loss; none of the contrastive-only features with it."""
        check(config.lm.name in list_lms(), "lm.name", f"unknown language model {config.lm.name!r}; one of {list_lms()}")
        fields = {f.name for f in dataclasses.fields(LMConfig)}
        unknown = sorted(set(config.lm.overrides.keys()) - fields)
        check(not unknown, "lm.overrides", f"unknown LMConfig field(s) {unknown}; valid: {sorted(fields)}")
        for field in ("dtype", "remat_policy"):
            check(field not in config.lm.overrides, f"lm.overrides.{field}", f"set config.{field} instead")
        check(
            config.data.tokenizer == "clip" or config.data.tokenizer.startswith("gpt2:"), "data.tokenizer",
            f"{config.loss} needs a tokenizer whose captions start with a start token (one of {LM_TOKENIZERS})",
        )
        check(config.data.context_length >= 2, "data.context_length", "a caption LM needs at least 2 tokens")
        for field in ("init_logit_scale", "init_logit_bias"):
            check(config[field] is None, field, f"{config.loss} has no logit scale or bias; leave it None")
        check(config.flip.mask_ratio == 0, "flip.mask_ratio", f"FLIP's patch masking is not used by {config.loss}")
        check(
            not config.evals or bool(cls.eval_types), "evals",
            f"{config.loss} trains on captions alone, without images: it has no evals",
        )
        lit = config.lit
        check(
            not (lit.lock_image or lit.lock_text or lit.init_image_from), "lit",
            f"{config.loss} does not use config.lit (LiMBeR always freezes both towers: config.limber)",
        )

    @classmethod
    def validate_batch_layout(cls, config: ml_collections.ConfigDict, batch_shards: int) -> None:
        """Nothing beyond the batch split: the loss sums per-example terms."""

    @classmethod
    def lm_overrides(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The create_lm overrides of config.lm: its overrides, the tokenizer's vocabulary size unless given,
        config.dtype and config.remat_policy."""
        vocab_size = get_tokenizer(config.data.tokenizer, config.data.context_length).vocab_size
        given = config.lm.overrides.to_dict()
        if given.get("vocab_size", vocab_size) < vocab_size:
            raise ConfigError(
                f"config.lm.overrides.vocab_size: {given['vocab_size']} is smaller than the {config.data.tokenizer} "
                f"tokenizer's {vocab_size}"
            )
        return {"vocab_size": vocab_size, **given, "dtype": config.dtype, "remat_policy": config.remat_policy}

    @classmethod
    def create_model(cls, config: ml_collections.ConfigDict) -> tuple[nn.Module, dict[str, Any]]:
        """A `models.limber.CaptionLM` of config.lm; the overrides are create_lm's."""
        from clip_jax.models import limber  # not at import: clip_jax.lm imports clip_jax.models

        overrides = cls.lm_overrides(config)
        return limber.create_caption_lm(config.lm.name, **overrides), overrides

    @classmethod
    def model_name(cls, config: ml_collections.ConfigDict) -> str:
        return config.lm.name

    @classmethod
    def check_model(cls, model: nn.Module, config: ml_collections.ConfigDict) -> None:
        check_lm_positions(model.text.config, config.data.context_length, prefix_length=0)

    @classmethod
    def locked_towers(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
        return ()

    @classmethod
    def initial_weights(cls, config: ml_collections.ConfigDict) -> list[InitialWeights]:
        return init_from_weights(config)

    # -- the train step -------------------------------------------------------

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        return {"tokens": ((self.config.batch_size, self.config.data.context_length), jnp.int32)}

    def one_example_batch(self) -> Arrays:
        return model_inputs({name: jnp.zeros((1, *shape[1:]), dtype) for name, (shape, dtype) in self.batch_shapes().items()})

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        return self.model.init(rng, self.one_example_batch()["tokens"])

    def init_extra(self) -> Arrays:
        return {}

    def extra_specs(self) -> dict[str, PartitionSpec]:
        return {}

    def prepare(self, step: jax.Array, batch: Arrays) -> Arrays:
        del step
        return {name: batch[name] for name in self.batch_fields}

    def forward(self, params: Any, batch_stats: Any, inputs: Arrays) -> tuple[Arrays, Any]:
        logits = self.model.apply({"params": params}, inputs["tokens"])
        return next_token_sums(logits, inputs["tokens"]), batch_stats

    def loss(
        self, outputs: Arrays, scalars: Arrays, extra: Arrays, step: jax.Array, axis_name: AxisName
    ) -> tuple[jax.Array, Arrays, Arrays]:
        del scalars, step
        value, metrics = mean_next_token_loss(outputs, axis_name)
        return value, metrics, extra

    def in_batch_metrics(self, outputs: Arrays, scalars: Arrays, axis_name: AxisName) -> Arrays:
        del outputs, scalars, axis_name
        return {}
