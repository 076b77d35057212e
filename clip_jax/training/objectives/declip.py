"""DeCLIP (Li et al. 2021, "Supervision Exists Everywhere"): four supervisions on top of CLIP's.

    loss = w.multi_view * mean of InfoNCE over {image view 1, 2} x {caption, EDA caption}
         + w.image_ssl  * SimSiam between the two image views (projector, predictor, stop-gradient)
         + w.text_ssl   * masked language modelling of the caption on the text tower
         + w.nearest_neighbour * InfoNCE of each image view against the nearest neighbours, in a FIFO
                                 queue of past caption embeddings, of its caption and EDA caption

The weights are config.declip.weights (DeCLIP's code: 0.6, 0.2, 0.2, 0.2). The
pipeline supplies the second view ("images_2") and the EDA caption
("tokens_aug"); the masked tokens are drawn here, for the whole global batch,
as a function of (seed, step). The text tower's vocabulary has one more row
than the tokenizer's: the mask token (id = the tokenizer's vocab_size).

The queue holds the caption embeddings of the last S = queue_size / batch_size
steps as [S, B, E]: slot step % S takes the step's global batch, sharded over
the batch axes along B, so enqueueing moves no data between devices and the
array is the same for any device count. It is part of the train state
(checkpointed, resumed exactly). Slots not yet written are left out of the
search; before any is written the nearest neighbour of a caption is itself.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import PartitionSpec

from clip_jax import losses
from clip_jax.config.errors import check
from clip_jax.losses.common import AxisName, psum
from clip_jax.models.clip import l2_normalize
from clip_jax.runtime.sharding import BATCH_AXES
from clip_jax.tokenizers import get_tokenizer
from clip_jax.training.objectives.contrastive import Clip
from clip_jax.training.objectives.protocol import Arrays

# Folded into the seed's key before the step: the token masks are a stream of their own.
MLM_STREAM = 0x4D4C4D  # "MLM"
TERMS = ("multi_view", "image_ssl", "text_ssl", "nearest_neighbour")


def declip_forward(model: nn.Module, inputs: Arrays, train: bool) -> Arrays:
    """Per-example outputs of DeCLIP's forward pass, with `model` (a bound CLIP with DeclipHeads) as `self`.

    inputs: "images", "images_2" [B, S, S, 3]; "tokens", "tokens_aug", "mlm_tokens" [B, L];
    "mlm_positions" [B, K] int32, "mlm_targets" [B, K] int32, "mlm_weights" [B, K] float32.
    Returns "image_embeds", "image_embeds_2", "text_embeds", "text_embeds_aug" [B, E] (L2-normalized),
    SimSiam's "p1", "z1", "p2", "z2" [B, P] and the masked-LM cross-entropy sum "mlm_sum" and
    weight "mlm_count" [B] of each example.
    """
    n = inputs["images"].shape[0]
    features = model.encode_image(jnp.concatenate([inputs["images"], inputs["images_2"]]), train=train)  # [2B, E]
    p, z = model.heads.simsiam(features, train=train)
    texts = jnp.concatenate([inputs["tokens"], inputs["tokens_aug"], inputs["mlm_tokens"]])  # [3B, L]
    text_embeds, sequence = model.text(texts, return_sequence=True)
    masked = jnp.take_along_axis(sequence[2 * n :], inputs["mlm_positions"][..., None], axis=1)  # [B, K, W]
    mlm_sum, mlm_count = losses.masked_lm_sums(
        model.heads.token_logits(masked), inputs["mlm_targets"], inputs["mlm_weights"]
    )
    embeds = l2_normalize(features)
    text_embeds = l2_normalize(text_embeds[: 2 * n])
    return {
        "image_embeds": embeds[:n], "image_embeds_2": embeds[n:],
        "text_embeds": text_embeds[:n], "text_embeds_aug": text_embeds[n:],
        "p1": p[:n], "z1": z[:n], "p2": p[n:], "z2": z[n:],
        "mlm_sum": mlm_sum, "mlm_count": mlm_count,
    }


class Declip(Clip):
    """DeCLIP's objective; batch fields "images", "tokens", "images_2", "tokens_aug"; extra state "text_queue"."""

    pipeline_options: ClassVar[dict[str, Any]] = {"declip_views": True}  # the second view and the EDA caption
    extra_tokens = 1  # the mask token
    batch_fields = ("images", "tokens", "images_2", "tokens_aug")

    @classmethod
    def validate(cls, config: ml_collections.ConfigDict) -> None:
        """Weights for DeCLIP's four terms, a queue of whole batches, a masking rate in (0, 1); no FLIP or LiT."""
        super().validate(config)
        d = config.declip
        check(sorted(d.weights) == sorted(TERMS), "declip.weights", f"needs exactly the weights {TERMS}")
        check(all(w >= 0 for w in d.weights.values()), "declip.weights", "must be >= 0")
        check(d.projection_dim >= 2, "declip.projection_dim", "must be at least 2")
        check(0 < d.mlm_rate < 1, "declip.mlm_rate", f"must be in (0, 1), got {d.mlm_rate}")
        check(d.mlm_max_predictions >= 1, "declip.mlm_max_predictions", "must be at least 1")
        check(
            d.queue_size >= config.batch_size and d.queue_size % config.batch_size == 0,
            "declip.queue_size",
            f"{d.queue_size} must be a positive multiple of batch_size {config.batch_size} (the queue holds whole batches)",
        )
        check(config.flip.mask_ratio == 0, "flip.mask_ratio", "FLIP's masking is not combined with loss=declip; set it to 0")
        check(not cls.locked_towers(config), "lit.lock_image", "DeCLIP trains both towers; unlock them or use another loss")

    @classmethod
    def head_overrides(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        return {"declip_projection_dim": config.declip.projection_dim}

    def __init__(self, model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0):
        super().__init__(model, config, mask_ratio)
        tokenizer = get_tokenizer(config.data.tokenizer, config.data.context_length)
        self.mask_id, self.special_ids = tokenizer.vocab_size, tokenizer.special_ids
        self.queue_slots = config.declip.queue_size // config.batch_size

    def init_variables(self, rng: jax.Array) -> dict[str, Any]:
        """The towers', scalars' and DeCLIP heads' variables from a one-example batch."""
        dummy = self.one_example_batch()
        k = self.config.declip.mlm_max_predictions
        dummy.update(
            mlm_tokens=dummy["tokens"], mlm_positions=jnp.zeros((1, k), jnp.int32),
            mlm_targets=jnp.zeros((1, k), jnp.int32), mlm_weights=jnp.zeros((1, k), jnp.float32),
        )
        return self.model.init(rng, dummy, False, method=declip_forward)

    def init_extra(self) -> Arrays:
        """The text queue [S, B, E], zeros until written."""
        shape = (self.queue_slots, self.config.batch_size, self.model.text.output_dim)
        return {"text_queue": jnp.zeros(shape, jnp.float32)}

    def extra_specs(self) -> dict[str, PartitionSpec]:
        return {"text_queue": PartitionSpec(None, BATCH_AXES)}

    def prepare(self, step: jax.Array, batch: Arrays) -> Arrays:
        """The batch plus the step's masked tokens: the first mlm_max_predictions selected positions per caption."""
        inputs = super().prepare(step, batch)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), MLM_STREAM), step)
        masked, targets, weights = losses.mask_tokens(
            key, inputs["tokens"], mask_id=self.mask_id, vocab_size=self.mask_id, special_ids=self.special_ids,
            rate=self.config.declip.mlm_rate,
        )
        k = self.config.declip.mlm_max_predictions
        positions = jnp.argsort(-weights, axis=1, stable=True)[:, :k].astype(jnp.int32)  # selected first, in order
        return {
            **inputs, "mlm_tokens": masked, "mlm_positions": positions,
            "mlm_targets": jnp.take_along_axis(targets, positions, axis=1),
            "mlm_weights": jnp.take_along_axis(weights, positions, axis=1),
        }

    def forward(self, params: Any, batch_stats: Any, inputs: Arrays) -> tuple[Arrays, Any]:
        variables = {"params": params, "batch_stats": batch_stats}
        outputs, updates = self.model.apply(variables, inputs, True, method=declip_forward, mutable=["batch_stats"])
        return outputs, updates["batch_stats"]

    def loss(
        self, outputs: Arrays, scalars: Arrays, extra: Arrays, step: jax.Array, axis_name: AxisName
    ) -> tuple[jax.Array, Arrays, Arrays]:
        scale = jnp.exp(scalars["logit_scale"])
        c = self.config
        images = [outputs["image_embeds"], outputs["image_embeds_2"]]
        texts = [outputs["text_embeds"], outputs["text_embeds_aug"]]
        queue = extra["text_queue"]  # [S, n, E] on this device
        filled = jnp.arange(self.queue_slots) < step  # slot s was written at steps s, s + S, ...
        masked_tokens = jnp.maximum(psum(jnp.sum(outputs["mlm_count"]), axis_name), 1.0)
        terms = {
            "multi_view": losses.multi_view_loss(
                images, texts, scale, axis_name, impl=c.loss_impl, block_size=c.loss_block_size
            ),
            "image_ssl": losses.simsiam_loss(outputs["p1"], outputs["z1"], outputs["p2"], outputs["z2"], axis_name),
            "text_ssl": psum(jnp.sum(outputs["mlm_sum"]), axis_name) / masked_tokens,
            "nearest_neighbour": losses.nearest_neighbour_loss(images, texts, queue, filled, scale, axis_name),
        }
        value = sum(c.declip.weights[name] * term for name, term in terms.items())
        metrics = {f"declip/{name}": term for name, term in terms.items()}
        queue = jax.lax.dynamic_update_index_in_dim(
            queue, jax.lax.stop_gradient(texts[0]).astype(queue.dtype), step % self.queue_slots, axis=0
        )
        return value, metrics, {**extra, "text_queue": queue}
