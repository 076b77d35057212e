"""The text Transformer tower: OpenAI's (causal, EOT-pooled) and SigLIP's (bidirectional, last-position-pooled)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import LN_EPS, Dtype, Embed, LayerNorm, Transformer, dense, normal, param_with_axes

POOL_TYPES = ("argmax", "last", "end")


class TextTransformer(nn.Module):
    """token + position embeddings -> blocks -> ln_final -> one position's feature @ text_projection.

    tokens [B, L] int32 -> embeddings [B, output_dim] float32. `pool_type`
    picks the position: 'argmax' of the ids (CLIP BPE, where EOT has the
    largest id), 'last' non-pad token (pad id 0; SentencePiece vocabularies)
    or 'end', position L - 1 whatever it holds (SigLIP's tower, open_clip's
    'last'; with `causal=False` every position sees the whole caption).
    OpenAI's tower is `causal` with a bias-free projection matrix; SigLIP's is
    bidirectional (`causal=False`), with `proj_bias=True` (a Linear layer) and
    `ln_eps=1e-6` in every LayerNorm.
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
    activation: str = "gelu"
    pool_type: str = "argmax"
    causal: bool = True
    proj_bias: bool = False
    ln_eps: float = LN_EPS
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
            activation=self.activation,
            causal=self.causal,
            ln_eps=self.ln_eps,
            dtype=self.dtype,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
            name="transformer",
        )(x)
        x = LayerNorm(self.dtype, self.ln_eps, name="ln_final")(x)
        pooled = x[jnp.arange(x.shape[0]), self._pool_positions(tokens)]  # [B, D]
        init = normal(self.width**-0.5)
        if self.proj_bias:
            projected = dense(self.output_dim, ("embed", "joint_embed"), "text_projection", self.dtype, kernel_init=init)(
                pooled
            )
        else:
            text_projection = self.param(
                "text_projection", param_with_axes(init, ("embed", "joint_embed")), (self.width, self.output_dim),
                jnp.float32,
            )
            projected = pooled @ text_projection.astype(self.dtype)
        embeddings = projected.astype(jnp.float32)
        return (embeddings, x) if return_sequence else embeddings

    def _pool_positions(self, tokens: jax.Array) -> jax.Array:
        """tokens [B, L] -> [B] the position each caption's embedding is read at (by `pool_type`)."""
        if self.pool_type == "argmax":
            return jnp.argmax(tokens, axis=-1)
        if self.pool_type == "last":
            return tokens.shape[1] - 1 - jnp.argmax((tokens != 0)[:, ::-1], axis=-1)
        return jnp.full(tokens.shape[:1], tokens.shape[1] - 1)
