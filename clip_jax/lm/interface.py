"""What a causal language model offers the rest of clip_jax (LiMBeR's frozen LM side).

Any linen module with these methods, called through `model.apply(variables,
..., method=model.<name>)`, can serve as the language model of an
image-to-text prefix model (`inputs_embeds = concat(prefix [B, k, D],
embed(tokens))`) and be decoded by `clip_jax.lm.generate`:

    embed(tokens int32 [B, L]) -> [B, L, D]           token embeddings only
    forward(inputs_embeds [B, L, D], attention_mask=None, positions=None)
        -> logits [B, L, V] float32                     one causal pass, no cache
    init_cache(batch, max_length) -> KVCache            needs no variables
    decode(inputs_embeds [B, L, D], cache, attention_mask=None, positions=None)
        -> (logits [B, L, V] float32, KVCache)          appends L positions

`attention_mask` is [B, L] (1 or True for a real token, 0 for padding);
`positions` [B, L] int32 default to the number of real tokens before each
one (`cumsum(mask) - 1`, counting those already in the cache), which is
what Hugging Face's generate uses and makes left-padded prompts behave like
unpadded ones.

The cache is an explicit pytree (`KVCache`), passed in and returned: no
hidden mutable state, so a decoding loop is a plain `jax.lax.scan` and a
cache can be sharded, donated or inspected like any other array tree.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for T = max_length slots, filled left to right.

    keys / values: one [B, T, H, Dh] array per layer (compute dtype).
    mask: [B, T] bool, slots holding a real (not padding) token.
    index: int32 [], the number of slots written so far.
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array

    @property
    def max_length(self) -> int:
        return self.mask.shape[1]


@runtime_checkable
class CausalLanguageModel(Protocol):
    """The duck type above; `isinstance(model, CausalLanguageModel)` checks the method names."""

    def embed(self, tokens: jax.Array) -> jax.Array: ...

    def forward(
        self, inputs_embeds: jax.Array, attention_mask: jax.Array | None = None, positions: jax.Array | None = None
    ) -> jax.Array: ...

    def init_cache(self, batch: int, max_length: int) -> KVCache: ...

    def decode(
        self,
        inputs_embeds: jax.Array,
        cache: KVCache,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]: ...


Variables = dict[str, Any]
