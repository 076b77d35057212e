"""The two-tower CLIP model: image tower, text tower, learnable logit scale (and bias)."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import param_with_axes


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """[..., E] -> unit vectors along the last axis (float32)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps**2))


class CLIP(nn.Module):
    """Two towers mapping into one embedding space.

    `visual` maps images [B, H, W, 3] and `text` maps tokens [B, L] to [B, E].
    With critic heads (CLIP-Lite, `clip_jax.models.critic`) each tower's output
    goes through its modality's head, [B, E] -> [B, D], and the model's
    embeddings are the heads' outputs. `__call__` returns dict(image_embeds [B, E] and text_embeds [B, E],
    L2-normalized; logit_scale = exp(parameter); logit_bias where the model has
    one). `encode_image` / `encode_text` return unnormalized embeddings.
    `heads` holds an objective's training-only heads (`clip_jax.training.objectives`),
    which that objective calls and initialises itself.
    """

    visual: nn.Module
    text: nn.Module
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = None
    image_critic: nn.Module | None = None
    text_critic: nn.Module | None = None
    heads: nn.Module | None = None  # training-only heads of an objective (DeCLIP's); unused here

    def setup(self) -> None:
        self.logit_scale = self.param(
            "logit_scale", param_with_axes(nn.initializers.constant(self.init_logit_scale), ()), (), jnp.float32
        )
        if self.init_logit_bias is not None:
            self.logit_bias = self.param(
                "logit_bias", param_with_axes(nn.initializers.constant(self.init_logit_bias), ()), (), jnp.float32
            )

    def encode_image(self, images: jax.Array, train: bool = False, keep_patches: jax.Array | None = None) -> jax.Array:
        """images [B, H, W, 3] float32, normalized -> [B, E] float32, unnormalized.

        keep_patches [B, K]: the patch tokens a ViT tower keeps (FLIP's masking); None: all of them.
        """
        if keep_patches is None:
            features = self.visual(images, train=train)
        else:
            features = self.visual(images, train=train, keep_patches=keep_patches)
        return features if self.image_critic is None else self.image_critic(features, train=train)

    def encode_text(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """tokens [B, L] int32 -> [B, E] float32, unnormalized."""
        features = self.text(tokens)
        return features if self.text_critic is None else self.text_critic(features, train=train)

    def __call__(
        self, images: jax.Array, tokens: jax.Array, train: bool = False, keep_patches: jax.Array | None = None
    ) -> dict[str, jax.Array]:
        outputs = {
            "image_embeds": l2_normalize(self.encode_image(images, train=train, keep_patches=keep_patches)),
            "text_embeds": l2_normalize(self.encode_text(tokens, train=train)),
            "logit_scale": jnp.exp(self.logit_scale),
        }
        if self.init_logit_bias is not None:
            outputs["logit_bias"] = self.logit_bias
        return outputs
