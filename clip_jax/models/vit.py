"""OpenAI's VisionTransformer image tower."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import Dtype, LayerNorm, Transformer, normal, param_with_axes, torch_default_kernel


class VisionTransformer(nn.Module):
    """Patchify conv -> [CLS] + positions -> ln_pre -> blocks -> ln_post([CLS]) @ proj.

    images [B, H, W, 3] (normalized, NHWC) -> embeddings [B, output_dim] float32.
    """

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    mlp_ratio: float = 4.0
    quick_gelu: bool = False
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        del train  # no batch statistics or dropout
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"expected images of {self.image_size}x{self.image_size}, got shape {images.shape}")
        scale = self.width**-0.5
        x = nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=param_with_axes(torch_default_kernel(), (None, None, None, "embed")),
            name="conv1",
        )(images.astype(self.dtype))  # [B, h, w, D]
        x = x.reshape(x.shape[0], -1, self.width)  # [B, N, D]
        class_embedding = self.param(
            "class_embedding", param_with_axes(normal(scale), ("embed",)), (self.width,), jnp.float32
        )
        positional_embedding = self.param(
            "positional_embedding",
            param_with_axes(normal(scale), (None, "embed")),
            (x.shape[1] + 1, self.width),
            jnp.float32,
        )
        cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (x.shape[0], 1, self.width))
        x = jnp.concatenate([cls, x], axis=1) + positional_embedding.astype(self.dtype)  # [B, N + 1, D]
        x = LayerNorm(self.dtype, name="ln_pre")(x)
        x = Transformer(
            self.width,
            self.layers,
            self.heads,
            mlp_ratio=self.mlp_ratio,
            quick_gelu=self.quick_gelu,
            dtype=self.dtype,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
            name="transformer",
        )(x)
        pooled = LayerNorm(self.dtype, name="ln_post")(x[:, 0])  # [B, D]
        proj = self.param(
            "proj", param_with_axes(normal(scale), ("embed", "joint_embed")), (self.width, self.output_dim), jnp.float32
        )
        return (pooled @ proj.astype(self.dtype)).astype(jnp.float32)
