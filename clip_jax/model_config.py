"""The model a training config describes, and the create_model overrides that rebuild it.

    model, overrides = model_from_config(config)
    create_model(config.model, **overrides)   # the same module again (clip_jax.weights.load_model does this)

The overrides are plain JSON-able values, saved in every checkpoint's metadata.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from clip_jax.config import initial_logit_bias, initial_logit_scale
from clip_jax.models import CLIP, create_model
from clip_jax.tokenizers import get_tokenizer


def logit_overrides(config: ml_collections.ConfigDict) -> dict[str, float]:
    """init_logit_scale (log of the multiplier) and, for losses with one, init_logit_bias, by config.loss."""
    overrides = {"init_logit_scale": float(initial_logit_scale(config))}
    bias = initial_logit_bias(config)
    if bias is not None:
        overrides["init_logit_bias"] = float(bias)
    return overrides


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The create_model overrides of config.model that the config asks for.

    With a tokenizer other than CLIP's BPE (a SentencePiece model), the text
    tower takes that vocabulary's size and pools at the last non-pad token,
    unless config.model_overrides.text says otherwise. The clip_lite loss adds
    CLIP-Lite's critic heads (config.clip_lite.critic_dim); the declip loss
    adds DeCLIP's heads and a mask token to the vocabulary.
    """
    overrides = {
        "dtype": config.dtype,
        "remat_policy": config.remat_policy,
        "scan_layers": config.scan_layers,
        **logit_overrides(config),
        **({"critic_dim": config.clip_lite.critic_dim} if config.loss == "clip_lite" and config.clip_lite.critic_dim else {}),
        **({"declip_projection_dim": config.declip.projection_dim} if config.loss == "declip" else {}),
        **config.model_overrides.to_dict(),
    }
    if config.data.tokenizer != "clip" or config.loss == "declip":
        text = {}
        vocab_size = get_tokenizer(config.data.tokenizer, config.data.context_length).vocab_size
        if config.loss == "declip":  # one more row: the mask token
            vocab_size += 1
        if config.data.tokenizer != "clip":
            text["pool_type"] = "last"
        overrides["text"] = {"vocab_size": vocab_size, **text, **overrides.get("text", {})}
    return overrides


def model_from_config(config: ml_collections.ConfigDict) -> tuple[CLIP, dict[str, Any]]:
    """(model, the create_model overrides that define it) from the config."""
    overrides = model_overrides(config)
    return create_model(config.model, **overrides), overrides
