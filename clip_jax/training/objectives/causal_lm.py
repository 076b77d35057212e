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

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec

from clip_jax.inference.images import model_inputs
from clip_jax.losses.common import AxisName, psum
from clip_jax.losses.declip import masked_lm_sums

Arrays = dict[str, jax.Array]
PAD_ID = 0


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


class CausalLm:
    """A caption LM alone. Batch field "tokens" [B, L]; outputs "loss_sum", "correct", "count" [B]; no extra state."""

    batch_fields: tuple[str, ...] = ("tokens",)
    locked: tuple[str, ...] = ()
    metric_outputs: tuple[str, ...] = ()  # its metrics come with the loss

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0):
        del mask_ratio  # FLIP masks image patches; there are none here
        self.model, self.config = model, config

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
