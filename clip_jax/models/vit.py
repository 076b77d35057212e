"""The ViT image tower: OpenAI's (class token, ln_pre, projection) and SigLIP's (timm's: MAP-pooled)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.conv import conv_general_dilated
from clip_jax.models.layers import (
    LN_EPS, Dtype, LayerNorm, Mlp, MultiHeadAttention, Transformer, normal, param_with_axes, torch_default_kernel,
)


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


def gather_patch_tokens(x: jax.Array, keep_patches: jax.Array, num_prefix: int = 1) -> jax.Array:
    """x [B, P + N, D] (P prefix tokens first: the class token, or none), keep_patches [B, K] indices into
    the N patches -> [B, P + K, D]."""
    patches = jnp.take_along_axis(x[:, num_prefix:], keep_patches[..., None], axis=1)
    return jnp.concatenate([x[:, :num_prefix], patches], axis=1)


POOL_TYPES = ("token", "map")


class MapHead(nn.Module):
    """Multihead attention pooling (timm's AttentionPoolLatent, SigLIP's MAP head): [B, N, D] -> [B, D].

    One learned latent query attends to the tokens; the attended value goes through out-projection,
    then gets a pre-LN MLP residual: y = attn(latent, x); y + mlp(norm(y)). No residual around the
    attention (the latent is not added back).
    """

    heads: int
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    ln_eps: float = LN_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        latent = self.param("latent", param_with_axes(normal(width**-0.5), ("embed",)), (width,), jnp.float32)
        query = jnp.broadcast_to(latent.astype(self.dtype), (x.shape[0], 1, width))  # [B, 1, D]
        y = MultiHeadAttention(self.heads, dtype=self.dtype, name="attn")(query, x)  # [B, 1, D]
        y = y + Mlp(
            int(width * self.mlp_ratio),
            fc_std=(2 * width) ** -0.5,
            proj_std=width**-0.5,
            activation=self.activation,
            dtype=self.dtype,
            name="mlp",
        )(LayerNorm(self.dtype, self.ln_eps, name="norm")(y))
        return y[:, 0]  # [B, D]


class VisionTransformer(nn.Module):
    """Patchify conv -> [CLS] + positions -> ln_pre -> blocks -> ln_post -> pooling -> embedding.

    images [B, H, W, 3] (normalized, NHWC) -> embeddings [B, output_dim] float32.
    OpenAI's ViT (the defaults): a class token, ln_pre, a bias-free patch
    conv, and `pool='token'`: ln_post of the class token @ proj. SigLIP's
    (timm's) ViT: `class_token=False`, `pre_norm=False`, `patch_bias=True`,
    `ln_eps=1e-6` and `pool='map'`: ln_post of every token, then a `MapHead`
    whose output is the embedding (no projection: output_dim must be the width).

    With `keep_patches` [B, K] (FLIP's masking, `random_patch_subset`) the
    blocks see the class token (if any) and those K patch tokens only; without
    it the computation is the plain ViT's.

    With `grid=True` it returns the patch tokens after the last block with
    ln_post applied to each (the class token dropped, no pooling): [B, N, width]
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
    activation: str = "gelu"
    class_token: bool = True
    pre_norm: bool = True
    patch_bias: bool = False
    pool: str = "token"
    ln_eps: float = LN_EPS
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def _check_fields(self) -> None:
        if self.pool not in POOL_TYPES:
            raise ValueError(f"pool must be one of {POOL_TYPES}, got {self.pool!r}")
        if self.pool == "token" and not self.class_token:
            raise ValueError("pool='token' pools the class token: it needs class_token=True (or use pool='map')")
        if self.pool == "map" and self.output_dim != self.width:
            raise ValueError(
                f"pool='map': the MAP head's output is the embedding, so output_dim ({self.output_dim}) must equal "
                f"the width ({self.width})"
            )

    @nn.compact
    def __call__(
        self, images: jax.Array, train: bool = False, keep_patches: jax.Array | None = None, grid: bool = False
    ) -> jax.Array:
        del train  # no batch statistics or dropout
        self._check_fields()
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"expected images of {self.image_size}x{self.image_size}, got shape {images.shape}")
        scale = self.width**-0.5
        x = nn.Conv(
            self.width,
            (self.patch_size, self.patch_size),
            strides=(self.patch_size, self.patch_size),
            padding="VALID",
            use_bias=self.patch_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=param_with_axes(torch_default_kernel(), (None, None, None, "embed")),
            bias_init=param_with_axes(nn.initializers.zeros, ("embed",)),
            conv_general_dilated=conv_general_dilated,  # the patches times the kernel: one matrix product
            name="conv1",
        )(images.astype(self.dtype))  # [B, h, w, D]
        x = x.reshape(x.shape[0], -1, self.width)  # [B, N, D]
        num_prefix = int(self.class_token)
        if self.class_token:  # created before the positions: a module's parameter RNGs follow creation order
            class_embedding = self.param(
                "class_embedding", param_with_axes(normal(scale), ("embed",)), (self.width,), jnp.float32
            )
            cls = jnp.broadcast_to(class_embedding.astype(self.dtype), (x.shape[0], 1, self.width))
            x = jnp.concatenate([cls, x], axis=1)
        positional_embedding = self.param(
            "positional_embedding",
            param_with_axes(normal(scale), (None, "embed")),
            (x.shape[1], self.width),
            jnp.float32,
        )
        x = x + positional_embedding.astype(self.dtype)  # [B, P + N, D]
        if keep_patches is not None:
            x = gather_patch_tokens(x, keep_patches, num_prefix)  # [B, P + K, D]
        if self.pre_norm:
            x = LayerNorm(self.dtype, self.ln_eps, name="ln_pre")(x)
        x = Transformer(
            self.width,
            self.layers,
            self.heads,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
            ln_eps=self.ln_eps,
            dtype=self.dtype,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
            name="transformer",
        )(x)
        ln_post = LayerNorm(self.dtype, self.ln_eps, name="ln_post")
        if grid:  # LayerNorm is per token: ln_post of the patch tokens alone equals that of all tokens, sliced
            return ln_post(x[:, num_prefix:]).astype(jnp.float32)  # [B, N, D]
        if self.pool == "map":  # timm drops the prefix tokens before the head
            head = MapHead(self.heads, self.mlp_ratio, self.activation, self.ln_eps, self.dtype, name="attn_pool")
            return head(ln_post(x)[:, num_prefix:]).astype(jnp.float32)  # [B, D]
        pooled = ln_post(x[:, 0])  # [B, D]
        proj = self.param(
            "proj", param_with_axes(normal(scale), ("embed", "joint_embed")), (self.width, self.output_dim), jnp.float32
        )
        return (pooled @ proj.astype(self.dtype)).astype(jnp.float32)
