"""Transformer building blocks shared by the image and text towers.

Parameters are float32 and carry logical axis names ('embed', 'mlp', 'heads',
'kv', 'vocab', 'layers', ...) for the sharding rules, and activations are
pinned by logical names too (`constrain`: the residual stream whole along its
width, per-head and MLP-hidden activations split like their weights, a no-op
outside the train step's `sharding.activation_layout`); computation runs in
`dtype` (float32 or bfloat16) with LayerNorm and softmax in float32.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.runtime.sharding import constrain

Dtype = Any
STREAM = ("batch", "length", "act_embed")  # the residual stream [B, L, D]: whole along D
HEADS = ("batch", "length", "heads", "kv")  # per-head activations [B, L, H, Dh]
Initializer = Callable[..., jax.Array]

LN_EPS = 1e-5


def normal(std: float) -> Initializer:
    return nn.initializers.normal(stddev=std)


def torch_default_kernel() -> Initializer:
    """PyTorch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def param_with_axes(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
    """Wraps an initializer so that the parameter carries logical axis names."""
    return nn.with_logical_partitioning(init, axes)


def dense(
    features: int, axes: tuple[str | None, str | None], name: str, dtype: Dtype,
    use_bias: bool = True, kernel_init: Initializer | None = None,
) -> nn.Dense:
    """A torch-initialised Linear (float32 parameters, `dtype` compute) whose kernel carries logical `axes`."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=param_with_axes(kernel_init or torch_default_kernel(), axes),
        bias_init=param_with_axes(nn.initializers.zeros, (axes[1],)),
        name=name,
    )


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI's activation: x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    """torch.nn.GELU(): the erf form, not the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def tanh_gelu(x: jax.Array) -> jax.Array:
    """The tanh approximation of GELU: big_vision's (flax's `nn.gelu`) and transformers' `gelu_pytorch_tanh`."""
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": exact_gelu, "quick_gelu": quick_gelu, "gelu_tanh": tanh_gelu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The MLP activation called `name` (a key of ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class Embed(nn.Module):
    """Token embedding: ids [B, L] -> rows of a table [V, D] ('vocab', 'embed') in `dtype`, [B, L, D].

    The table is gathered whole along D before the lookup (FSDP splits it there) so that the rows come
    out split like the batch, as the residual stream is; a 'vocab' split over 'tensor' stays (each shard
    looks up its rows, one reduction joins them). Computes what `nn.Embed` does, under the same names.
    """

    num_embeddings: int
    features: int
    embedding_init: Initializer
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.param("embedding", self.embedding_init, (self.num_embeddings, self.features), jnp.float32)
        table = constrain(table.astype(self.dtype), ("vocab", None))
        return constrain(jnp.take(table, ids, axis=0), STREAM)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis in float32 (eps 1e-5 unless given), cast back to `dtype`."""

    dtype: Dtype = jnp.float32
    eps: float = LN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", param_with_axes(nn.initializers.ones, ("embed",)), (width,), jnp.float32)
        bias = self.param("bias", param_with_axes(nn.initializers.zeros, ("embed",)), (width,), jnp.float32)
        x = x.astype(jnp.float32)
        mean = x.mean(axis=-1, keepdims=True)
        variance = jnp.square(x - mean).mean(axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(variance + self.eps) * scale + bias
        return y.astype(self.dtype)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention with separate q/k/v projections (with bias).

    Shapes: queries [B, Q, D], keys/values [B, K, D] -> [B, Q, out_features].
    Kernels are [D, heads, head_dim] and [heads, head_dim, out_features].
    """

    num_heads: int
    out_features: int | None = None
    qkv_std: float = 0.02
    out_std: float = 0.02
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, queries: jax.Array, keys_values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        width = queries.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads

        def projection(name: str) -> nn.DenseGeneral:
            return nn.DenseGeneral(
                features=(self.num_heads, head_dim),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=param_with_axes(normal(self.qkv_std), ("embed", "heads", "kv")),
                bias_init=param_with_axes(nn.initializers.zeros, ("heads", "kv")),
                name=name,
            )

        q = constrain(projection("query")(queries) * jnp.asarray(head_dim**-0.5, self.dtype), HEADS)  # [B, Q, H, Dh]
        k = constrain(projection("key")(keys_values), HEADS)  # [B, K, H, Dh]
        v = constrain(projection("value")(keys_values), HEADS)  # [B, K, H, Dh]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        attended = constrain(jnp.einsum("bhqk,bkhd->bqhd", weights, v), HEADS)  # [B, Q, H, Dh]
        return nn.DenseGeneral(
            features=self.out_features or width,
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=param_with_axes(normal(self.out_std), ("heads", "kv", "embed")),
            bias_init=param_with_axes(nn.initializers.zeros, ("embed",)),
            name="out",
        )(attended)


class Mlp(nn.Module):
    """c_fc (mlp_ratio x width) -> `activation` (ACTIVATIONS) -> c_proj. [B, L, D] -> [B, L, D]."""

    hidden: int
    fc_std: float
    proj_std: float
    activation: str = "gelu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = nn.Dense(
            self.hidden,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=param_with_axes(normal(self.fc_std), ("embed", "mlp")),
            bias_init=param_with_axes(nn.initializers.zeros, ("mlp",)),
            name="c_fc",
        )(x)
        h = constrain(activation(self.activation)(h), ("batch", "length", "mlp"))
        return nn.Dense(
            width,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=param_with_axes(normal(self.proj_std), ("mlp", "embed")),
            bias_init=param_with_axes(nn.initializers.zeros, ("embed",)),
            name="c_proj",
        )(h)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). [B, L, D] -> [B, L, D].

    `causal`: each position attends to itself and those before it; `ln_eps`: both LayerNorms' epsilon.

    Takes and returns a (x, unused) pair so that `nn.scan` can stack it.
    Initialisation follows OpenAI's text tower: attention in-projections std
    width^-0.5, output projections std width^-0.5 (2 layers)^-0.5, c_fc std
    (2 width)^-0.5.
    """

    heads: int
    layers: int
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    causal: bool = False
    ln_eps: float = LN_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, unused: Any = None) -> tuple[jax.Array, None]:
        width = x.shape[-1]
        attn_std = width**-0.5
        proj_std = attn_std * (2 * self.layers) ** -0.5
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.bool_), dtype=jnp.bool_) if self.causal else None
        x = constrain(x, STREAM)
        h = LayerNorm(self.dtype, self.ln_eps, name="ln_1")(x)
        x = constrain(x + MultiHeadAttention(
            self.heads, qkv_std=attn_std, out_std=proj_std, dtype=self.dtype, name="attn"
        )(h, h, mask), STREAM)
        h = LayerNorm(self.dtype, self.ln_eps, name="ln_2")(x)
        x = x + Mlp(
            int(width * self.mlp_ratio),
            fc_std=(2 * width) ** -0.5,
            proj_std=proj_std,
            activation=self.activation,
            dtype=self.dtype,
            name="mlp",
        )(h)
        return constrain(x, STREAM), None


REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Transformer(nn.Module):
    """A stack of `layers` residual attention blocks. [B, L, D] -> [B, L, D].

    `remat_policy` (a key of REMAT_POLICIES) rematerialises each block in the
    backward pass; `scan_layers` stacks the blocks with `nn.scan` into one
    parameter subtree `resblocks` with a leading 'layers' axis (instead of
    `resblocks_0` ... `resblocks_{L-1}`). All variants compute the same values.
    """

    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    activation: str = "gelu"
    causal: bool = False
    ln_eps: float = LN_EPS
    dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got {self.remat_policy!r}")
        block = ResidualAttentionBlock
        if self.remat_policy != "none":
            block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan_layers)
        options = dict(
            heads=self.heads,
            layers=self.layers,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
            causal=self.causal,
            ln_eps=self.ln_eps,
            dtype=self.dtype,
        )
        if self.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=self.layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, _ = stack(**options, name="resblocks")(x, None)
        else:
            for i in range(self.layers):
                x, _ = block(**options, name=f"resblocks_{i}")(x, None)
        return x
