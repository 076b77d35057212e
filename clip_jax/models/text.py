"""OpenAI's causal text Transformer tower."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import Dtype, Embed, LayerNorm, Transformer, normal, param_with_axes

POOL_TYPES = ("argmax", "last")


class TextTransformer(nn.Module):
    """token + position embeddings -> causal blocks -> ln_final -> feature at EOT @ text_projection.

    tokens [B, L] int32 -> embeddings [B, output_dim] float32. `pool_type`
    picks the EOT position: 'argmax' of the ids (CLIP BPE, where EOT has the
    largest id) or 'last' non-pad token (pad id 0; SentencePiece vocabularies).
    With return_sequence, also every position's feature after ln_final [B, L, width]
    (DeCLIP's masked language modelling head reads them).
    """

    context_length: int
    vocab_size: int
    width: int
    layers: int
    heads: int
    output_dim: int
    mlp_ratio: float = 4.0
    quick_gelu: bool = False
    pool_type: str = "argmax"
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array, return_sequence: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
        if self.pool_type not in POOL_TYPES:
            raise ValueError(f"pool_type must be one of {POOL_TYPES}, got {self.pool_type!r}")
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(f"expected tokens [B, <= {self.context_length}], got shape {tokens.shape}")
        x = Embed(
            self.vocab_size,
            self.width,
            embedding_init=param_with_axes(normal(0.02), ("vocab", "embed")),
            dtype=self.dtype,
            name="token_embedding",
        )(tokens)  # [B, L, D]
        positional_embedding = self.param(
            "positional_embedding",
            param_with_axes(normal(0.01), (None, "embed")),
            (self.context_length, self.width),
            jnp.float32,
        )
        x = x + positional_embedding[: tokens.shape[1]].astype(self.dtype)
        x = Transformer(
            self.width,
            self.layers,
            self.heads,
            mlp_ratio=self.mlp_ratio,
            quick_gelu=self.quick_gelu,
            causal=True,
            dtype=self.dtype,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
            name="transformer",
        )(x)
        x = LayerNorm(self.dtype, name="ln_final")(x)
        if self.pool_type == "argmax":
            eot = jnp.argmax(tokens, axis=-1)
        else:
            eot = tokens.shape[1] - 1 - jnp.argmax((tokens != 0)[:, ::-1], axis=-1)
        pooled = x[jnp.arange(x.shape[0]), eot]  # [B, D]
        text_projection = self.param(
            "text_projection",
            param_with_axes(normal(self.width**-0.5), ("embed", "joint_embed")),
            (self.width, self.output_dim),
            jnp.float32,
        )
        embeddings = (pooled @ text_projection.astype(self.dtype)).astype(jnp.float32)
        return (embeddings, x) if return_sequence else embeddings
