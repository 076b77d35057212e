"""Causal language models (GPT-2, GPT-J): the LM side of LiMBeR. Their Hugging Face weights come in through
`clip_jax.weights.hf_lm` (`python -m clip_jax.import_weights --lm NAME`).

    from clip_jax import lm
    model = lm.create_lm("gpt2")                                  # a linen CausalLM
    variables = from_hf_state_dict(read_state_dict(path), model)  # clip_jax.weights.hf_lm
    embeds = model.apply(variables, tokens, method=model.embed)   # [B, L, D]
    logits = model.apply(variables, jnp.concatenate([prefix, embeds], 1), method=model.forward)
    new_tokens = lm.generate(model, variables, tokens, max_new_tokens=20)

See `lm.interface` for the contract (embed / forward / init_cache / decode).
"""
from clip_jax.lm.generate import generate, greedy_decode
from clip_jax.lm.interface import CausalLanguageModel, KVCache
from clip_jax.lm.model import CausalLM, LMConfig
from clip_jax.lm.presets import LM_CONFIGS, count_params, create_lm, list_lms, lm_config

__all__ = [
    "CausalLM",
    "CausalLanguageModel",
    "KVCache",
    "LMConfig",
    "LM_CONFIGS",
    "count_params",
    "create_lm",
    "generate",
    "greedy_decode",
    "list_lms",
    "lm_config",
]
