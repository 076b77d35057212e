"""A decoder-only causal language model in GPT-2 and GPT-J layouts (one module, one config).

GPT-2: learned absolute positions, sequential pre-LN blocks
`x + attn(ln_1(x))`, `x + mlp(ln_2(x))`, q/k/v/out projections with bias,
head tied to the token embedding. GPT-J: rotary positions on the first
`rotary_dim` dimensions of each head (interleaved pairs, "rotate every two"),
parallel blocks `x + attn(ln_1(x)) + mlp(ln_1(x))`, projections without bias,
an untied lm_head with bias. Both: gelu_new (tanh approximation) MLPs and a
final ln_f.

Parameters are float32 with logical axis names ('vocab', 'embed', 'heads',
'kv', 'mlp') for `clip_jax.runtime.sharding.logical_shardings`; computation runs in
`dtype` with LayerNorm, attention logits and softmax in float32. Logits are
float32. The methods follow `clip_jax.lm.interface.CausalLanguageModel`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.lm.interface import KVCache
from clip_jax.models.layers import REMAT_POLICIES, LayerNorm, normal, param_with_axes

POSITIONS = ("learned", "rotary")


@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int
    max_positions: int
    width: int
    layers: int
    heads: int
    mlp_dim: int
    positions: str = "learned"  # 'learned' (GPT-2) | 'rotary' (GPT-J)
    rotary_dim: int | None = None  # rotary dims per head; None: the whole head
    parallel_block: bool = False  # GPT-J: x + attn(ln_1(x)) + mlp(ln_1(x))
    tie_embeddings: bool = True  # logits = x @ wte^T (GPT-2); else an lm_head
    head_bias: bool = False  # the untied lm_head has a bias (GPT-J)
    attn_bias: bool = True  # q/k/v/out projections have biases (GPT-2)
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32  # compute; parameters stay float32
    remat_policy: str = "none"  # a key of clip_jax.models.layers.REMAT_POLICIES

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        rotary = self.rotary_dim or self.head_dim
        if self.positions == "rotary" and (rotary % 2 or rotary > self.head_dim):
            raise ValueError(f"rotary_dim must be even and at most head_dim {self.head_dim}, got {rotary}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy must be one of {sorted(REMAT_POLICIES)}, got {self.remat_policy!r}")
        if self.tie_embeddings and self.head_bias:
            raise ValueError("head_bias needs an untied lm_head (tie_embeddings=False)")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def apply_rotary(x: jax.Array, positions: jax.Array, rotary_dim: int) -> jax.Array:
    """GPT-J's rotary embedding on the first `rotary_dim` dims of each head. x [B, L, H, Dh], positions [B, L].

    Dimension pairs are interleaved (2i, 2i+1), rotated by positions * 10000^(-2i / rotary_dim).
    """
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, R/2]
    sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
    rot = x[..., :rotary_dim].astype(jnp.float32)
    x1, x2 = rot[..., ::2], rot[..., 1::2]
    rotated = jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    return jnp.concatenate([rotated.astype(x.dtype), x[..., rotary_dim:]], axis=-1)


def _dense_general(features, axes, use_bias, std, dtype, name, axis=-1) -> nn.DenseGeneral:
    return nn.DenseGeneral(
        features,
        axis=axis,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=param_with_axes(normal(std), axes),
        bias_init=param_with_axes(nn.initializers.zeros, axes[1 if axis == -1 else len(axis) :]),
        name=name,
    )


class Attention(nn.Module):
    """Causal self-attention over new tokens and (optionally) a layer's KV cache.

    x [B, L, D] -> ([B, L, D], updated (keys, values) or None). Query i sits in
    slot query_slots[i] and sees key slots j <= query_slots[i] with key_valid[b, j].
    Kernels: q/k/v [D, H, Dh], out [H, Dh, D].
    """

    config: LMConfig

    @nn.compact
    def __call__(self, x, positions, key_valid, query_slots, kv, index) -> tuple[jax.Array, Any]:
        cfg = self.config
        heads_kv = (cfg.heads, cfg.head_dim)
        q, k, v = (
            _dense_general(heads_kv, ("embed", "heads", "kv"), cfg.attn_bias, 0.02, cfg.dtype, name)(x)
            for name in ("query", "key", "value")
        )  # [B, L, H, Dh]
        if cfg.positions == "rotary":
            rotary_dim = cfg.rotary_dim or cfg.head_dim
            q, k = apply_rotary(q, positions, rotary_dim), apply_rotary(k, positions, rotary_dim)
        if kv is not None:  # write the new keys/values at slots index .. index + L - 1
            k = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, index, 0, 0))
            v = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, index, 0, 0))
            kv = (k, v)
        causal = jnp.arange(k.shape[1])[None, :] <= query_slots[:, None]  # [L, T]
        mask = key_valid[:, None, None, :] & causal[None, None]  # [B, 1, L, T]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * cfg.head_dim**-0.5
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v.astype(cfg.dtype))  # [B, L, H, Dh]
        out_std = 0.02 / (2 * cfg.layers) ** 0.5
        out = _dense_general(cfg.width, ("heads", "kv", "embed"), cfg.attn_bias, out_std, cfg.dtype, "out", (-2, -1))
        return out(attended), kv


class Mlp(nn.Module):
    """fc_in (mlp_dim) -> gelu_new -> fc_out. [B, L, D] -> [B, L, D]."""

    config: LMConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = _dense_general(cfg.mlp_dim, ("embed", "mlp"), True, 0.02, cfg.dtype, "fc_in")(x)
        h = jax.nn.gelu(h, approximate=True)
        return _dense_general(cfg.width, ("mlp", "embed"), True, 0.02 / (2 * cfg.layers) ** 0.5, cfg.dtype, "fc_out")(h)


class Block(nn.Module):
    """Pre-LN block, sequential (GPT-2) or parallel (GPT-J). [B, L, D] -> ([B, L, D], kv)."""

    config: LMConfig

    @nn.compact
    def __call__(self, x, positions, key_valid, query_slots, kv, index) -> tuple[jax.Array, Any]:
        cfg = self.config
        h = LayerNorm(cfg.dtype, cfg.layer_norm_eps, name="ln_1")(x)
        attended, kv = Attention(cfg, name="attn")(h, positions, key_valid, query_slots, kv, index)
        if cfg.parallel_block:
            return attended + Mlp(cfg, name="mlp")(h) + x, kv
        x = x + attended
        return x + Mlp(cfg, name="mlp")(LayerNorm(cfg.dtype, cfg.layer_norm_eps, name="ln_2")(x)), kv


class CausalLM(nn.Module):
    """GPT-2 / GPT-J decoder. `model.init(rng, tokens)`; `model.apply(variables, tokens)` -> logits [B, L, V].

    Parameter tree: wte, wpe (learned positions), h_0 .. h_{layers-1}
    {ln_1, attn {query, key, value, out}, ln_2 (sequential blocks), mlp {fc_in,
    fc_out}}, ln_f, lm_head (untied).
    """

    config: LMConfig

    def setup(self):
        cfg = self.config
        embed_init = param_with_axes(normal(0.02), ("vocab", "embed"))
        self.wte = nn.Embed(
            cfg.vocab_size, cfg.width, dtype=cfg.dtype, param_dtype=jnp.float32, embedding_init=embed_init
        )
        if cfg.positions == "learned":
            self.wpe = nn.Embed(
                cfg.max_positions, cfg.width, dtype=cfg.dtype, param_dtype=jnp.float32,
                embedding_init=param_with_axes(normal(0.02), (None, "embed")),
            )
        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat_policy])
        self.h = [block(cfg) for _ in range(cfg.layers)]
        self.ln_f = LayerNorm(cfg.dtype, cfg.layer_norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = _dense_general(cfg.vocab_size, ("embed", "vocab"), cfg.head_bias, 0.02, cfg.dtype, None)

    def __call__(
        self, tokens: jax.Array, attention_mask: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        """tokens [B, L] int32 -> logits [B, L, V] float32 (embed, then forward)."""
        return self.forward(self.embed(tokens), attention_mask, positions)

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Token embeddings only (no positions): tokens [B, L] -> [B, L, D] in the compute dtype."""
        return self.wte(tokens)

    def forward(
        self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array:
        """inputs_embeds [B, L, D] (e.g. a soft prompt then embed(tokens)) -> logits [B, L, V] float32."""
        batch, length = inputs_embeds.shape[:2]
        if self.config.positions == "learned" and length > self.config.max_positions:
            raise ValueError(f"sequence of {length} is longer than max_positions {self.config.max_positions}")
        valid = _valid(attention_mask, batch, length)
        if positions is None:
            positions = jnp.maximum(jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1, 0)
        logits, _ = self._run(inputs_embeds, positions, valid, jnp.arange(length), None, jnp.zeros((), jnp.int32))
        return logits

    def init_cache(self, batch: int, max_length: int) -> KVCache:
        """An empty cache of `max_length` slots (prompt plus generated tokens); needs no variables."""
        cfg = self.config
        if cfg.positions == "learned" and max_length > cfg.max_positions:
            raise ValueError(f"max_length {max_length} is longer than max_positions {cfg.max_positions}")
        shape = (batch, max_length, cfg.heads, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, cfg.dtype) for _ in range(cfg.layers))
        return KVCache(
            keys=zeros, values=zeros, mask=jnp.zeros((batch, max_length), jnp.bool_), index=jnp.zeros((), jnp.int32)
        )

    def decode(
        self,
        inputs_embeds: jax.Array,
        cache: KVCache,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Appends L positions to `cache`: inputs_embeds [B, L, D] -> (logits [B, L, V], updated cache).

        Slots past cache.max_length are not checked inside jit (dynamic_update_slice would clamp):
        size the cache for the whole sequence.
        """
        batch, length = inputs_embeds.shape[:2]
        valid = _valid(attention_mask, batch, length)
        if positions is None:
            seen = cache.mask.sum(axis=-1, keepdims=True, dtype=jnp.int32)
            positions = jnp.maximum(seen + jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1, 0)
        key_valid = jax.lax.dynamic_update_slice(cache.mask, valid, (0, cache.index))
        kvs = tuple(zip(cache.keys, cache.values))
        logits, kvs = self._run(
            inputs_embeds, positions, key_valid, cache.index + jnp.arange(length), kvs, cache.index
        )
        keys, values = (tuple(kv[i] for kv in kvs) for i in (0, 1))
        return logits, KVCache(keys=keys, values=values, mask=key_valid, index=cache.index + length)

    def _run(self, x, positions, key_valid, query_slots, kvs, index) -> tuple[jax.Array, Any]:
        cfg = self.config
        x = x.astype(cfg.dtype)
        if cfg.positions == "learned":
            x = x + self.wpe(positions)
        new_kvs = []
        for i, block in enumerate(self.h):
            x, kv = block(x, positions, key_valid, query_slots, None if kvs is None else kvs[i], index)
            new_kvs.append(kv)
        x = self.ln_f(x)
        logits = self.wte.attend(x) if cfg.tie_embeddings else self.lm_head(x)
        return logits.astype(jnp.float32), None if kvs is None else tuple(new_kvs)


def _valid(attention_mask: jax.Array | None, batch: int, length: int) -> jax.Array:
    if attention_mask is None:
        return jnp.ones((batch, length), jnp.bool_)
    if attention_mask.shape != (batch, length):
        raise ValueError(f"attention_mask has shape {attention_mask.shape}, inputs are [{batch}, {length}]")
    return attention_mask.astype(jnp.bool_)
