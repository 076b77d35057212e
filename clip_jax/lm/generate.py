"""Greedy and top-k decoding with a KV cache, one jitted program per (model, lengths, options).

    tokens = generate(model, variables, prompt, attention_mask, max_new_tokens=20)           # greedy
    tokens = generate(model, variables, prompt, max_new_tokens=20, top_k=40, rng=key)        # sampled

`prompt` is token ids [B, P] int32 or input embeddings [B, P, D] (LiMBeR:
concat(image prefix [B, k, D], model.embed(tokens))). Prompts of different
lengths are left-padded with `attention_mask` [B, P] zero on the padding.
The prompt fills the cache in one pass; each new token is then one cached
step inside a `jax.lax.scan`, so the whole loop compiles once for a fixed
`max_new_tokens`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from clip_jax.lm.interface import CausalLanguageModel, Variables


def _pick(logits: jax.Array, rng: jax.Array | None, top_k: int | None, temperature: float) -> jax.Array:
    """Next tokens [B] from last-position logits [B, V]: argmax, or a sample among the top k."""
    if top_k is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    values, indices = jax.lax.top_k(logits, top_k)  # [B, k]
    choice = jax.random.categorical(rng, values / temperature, axis=-1)
    return jnp.take_along_axis(indices, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "top_k", "eos_id", "pad_id"))
def _generate(model, variables, prompt, attention_mask, rng, temperature, *, max_new_tokens, top_k, eos_id, pad_id):
    if prompt.ndim == 2:
        prompt = model.apply(variables, prompt, method=model.embed)
    batch, length = prompt.shape[:2]
    cache = model.init_cache(batch, length + max_new_tokens)
    logits, cache = model.apply(variables, prompt, cache, attention_mask, method=model.decode)
    rngs = jax.random.split(rng, max_new_tokens)
    first = _pick(logits[:, -1], rngs[0], top_k, temperature)
    done = jnp.zeros((batch,), jnp.bool_) if eos_id is None else first == eos_id

    def step(carry, rng):
        token, cache, done = carry
        embeds = model.apply(variables, token[:, None], method=model.embed)
        logits, cache = model.apply(variables, embeds, cache, method=model.decode)
        token = jnp.where(done, pad_id, _pick(logits[:, -1], rng, top_k, temperature))
        if eos_id is not None:
            done = done | (token == eos_id)
        return (token, cache, done), token

    _, rest = jax.lax.scan(step, (first, cache, done), rngs[1:])
    return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate(
    model: CausalLanguageModel,
    variables: Variables,
    prompt: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    max_new_tokens: int,
    top_k: int | None = None,
    temperature: float = 1.0,
    rng: jax.Array | None = None,
    eos_id: int | None = None,
    pad_id: int = 0,
) -> jax.Array:
    """New tokens [B, max_new_tokens] int32 after `prompt` (ids [B, P] or embeddings [B, P, D]).

    Greedy (argmax) when top_k is None, else samples among the top_k logits
    divided by `temperature` (needs `rng`). After `eos_id` a row emits `pad_id`.
    The cache holds P + max_new_tokens slots (at most max_positions for learned positions).
    """
    if top_k is not None and rng is None:
        raise ValueError("top-k sampling needs an rng")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    batch, length = prompt.shape[:2]
    mask = jnp.ones((batch, length), jnp.bool_) if attention_mask is None else jnp.asarray(attention_mask, jnp.bool_)
    rng = jax.random.key(0) if rng is None else rng
    return _generate(
        model, variables, prompt, mask, rng, jnp.float32(temperature),
        max_new_tokens=max_new_tokens, top_k=top_k, eos_id=eos_id, pad_id=pad_id,
    )


def greedy_decode(
    model: CausalLanguageModel, variables: Variables, prompt: jax.Array, attention_mask: jax.Array | None = None,
    *, max_new_tokens: int, eos_id: int | None = None, pad_id: int = 0,
) -> jax.Array:
    """`generate` with argmax at every step."""
    return generate(
        model, variables, prompt, attention_mask, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id
    )
