"""Named language-model configs (Hugging Face's names) and `create_lm`."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.lm.model import CausalLM, LMConfig

_GPT2 = dict(vocab_size=50257, max_positions=1024, positions="learned", tie_embeddings=True, attn_bias=True)
_GPTJ = dict(positions="rotary", parallel_block=True, tie_embeddings=False, head_bias=True, attn_bias=False)


def _gpt2(width: int, layers: int, heads: int) -> LMConfig:
    return LMConfig(width=width, layers=layers, heads=heads, mlp_dim=4 * width, **_GPT2)


LM_CONFIGS: dict[str, LMConfig] = {
    "gpt2": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "gpt-j-6b": LMConfig(
        vocab_size=50400, max_positions=2048, width=4096, layers=28, heads=16, mlp_dim=16384, rotary_dim=64, **_GPTJ
    ),
    # Tiny sizes for tests (tests/fixtures/make_hf_lm_fixtures.py builds their transformers twins).
    "gpt2-tiny": dataclasses.replace(_gpt2(64, 2, 4), vocab_size=128, max_positions=32, mlp_dim=128),
    "gpt-j-tiny": LMConfig(
        vocab_size=128, max_positions=32, width=64, layers=2, heads=4, mlp_dim=128, rotary_dim=8, **_GPTJ
    ),
}


def list_lms() -> list[str]:
    """Names accepted by `create_lm`."""
    return list(LM_CONFIGS)


def lm_config(name: str, **overrides: Any) -> LMConfig:
    """The LMConfig of `name` with field overrides (dtype may be a string such as 'bfloat16')."""
    if name not in LM_CONFIGS:
        raise ValueError(f"unknown language model {name!r}; available: {', '.join(list_lms())}")
    fields = {f.name for f in dataclasses.fields(LMConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown LM override(s) {unknown}; valid fields: {sorted(fields)}")
    if "dtype" in overrides:
        overrides = {**overrides, "dtype": jnp.dtype(overrides["dtype"])}
    return dataclasses.replace(LM_CONFIGS[name], **overrides)


def create_lm(name: str, **overrides: Any) -> CausalLM:
    """A linen CausalLM by name, e.g. create_lm("gpt2", dtype=jnp.bfloat16, remat_policy="full")."""
    return CausalLM(lm_config(name, **overrides))


def param_shapes(model: CausalLM) -> Any:
    """The model's boxed parameter shapes (nn.LogicallyPartitioned of ShapeDtypeStruct); no memory used."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]


def count_params(model: CausalLM) -> int:
    """Number of parameters (a tied head counted once, as torch's model.parameters() does)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(param_shapes(model)))))
