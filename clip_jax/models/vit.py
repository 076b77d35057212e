"""OpenAI's VisionTransformer image tower."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import Dtype, LayerNorm, Transformer, normal, param_with_axes, torch_default_kernel


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """Patch tokens FLIP keeps of `num_patches` at `mask_ratio`: round((1 - mask_ratio) * num_patches)."""
    keep = round((1 - mask_ratio) * num_patches)
    if not 1 <= keep <= num_patches:
        raise ValueError(f"mask_ratio {mask_ratio} keeps {keep} of {num_patches} patches; it must keep at least one")
    return keep


def random_patch_subset(rng: jax.Array, batch_size: int, num_patches: int, mask_ratio: float) -> jax.Array:
    """FLIP's random masking: [B, K] int32, each row K = num_kept_patches(N, r) distinct patch indices, ascending.

    Every example draws its own uniformly random subset (the first K of a random permutation).
    """
    noise = jax.random.uniform(rng, (batch_size, num_patches))
    keep = jnp.argsort(noise, axis=1)[:, : num_kept_patches(num_patches, mask_ratio)]
    return jnp.sort(keep, axis=1).astype(jnp.int32)


def gather_patch_tokens(x: jax.Array, keep_patches: jax.Array) -> jax.Array:
    """x [B, 1 + N, D] (class token first), keep_patches [B, K] indices into the N patches -> [B, 1 + K, D]."""
    patches = jnp.take_along_axis(x[:, 1:], keep_patches[..., None], axis=1)
    return jnp.concatenate([x[:, :1], patches], axis=1)


class VisionTransformer(nn.Module):
    """Patchify conv -> [CLS] + positions -> ln_pre -> blocks -> ln_post([CLS]) @ proj.

    images [B, H, W, 3] (normalized, NHWC) -> embeddings [B, output_dim] float32.
    With `keep_patches` [B, K] (FLIP's masking, `random_patch_subset`) the
    blocks see the class token and those K patch tokens only; without it the
    computation is the plain ViT's.

    With `grid=True` it returns the patch tokens after the last block with
    ln_post applied to each (the class token dropped, no proj): [B, N, width]
    float32 in row-major patch order (N = (image_size / patch_size)^2, or K
    with keep_patches). LiMBeR's "grid" prefix reads them. The default output
    is unchanged.
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

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, keep_patches: jax.Array | None = None, grid: bool = False
    ) -> jax.Array:
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
        if keep_patches is not None:
            x = gather_patch_tokens(x, keep_patches)  # [B, K + 1, D]
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
        if grid:  # LayerNorm is per token: ln_post of the patch tokens alone equals that of all tokens, sliced
            return LayerNorm(self.dtype, name="ln_post")(x[:, 1:]).astype(jnp.float32)  # [B, N, D]
        pooled = LayerNorm(self.dtype, name="ln_post")(x[:, 0])  # [B, D]
        proj = self.param(
            "proj", param_with_axes(normal(scale), ("embed", "joint_embed")), (self.width, self.output_dim), jnp.float32
        )
        return (pooled @ proj.astype(self.dtype)).astype(jnp.float32)
