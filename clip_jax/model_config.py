"""The model a training config describes, and the metadata that rebuilds it.

    model, overrides = model_from_config(config)
    create_model(config.model, **overrides)   # the same CLIP again (clip_jax.weights.storage.load_model does this)
    metadata = model_metadata(config, overrides)   # {"kind", "model", "overrides"}: weights.model_from_metadata

The overrides are plain JSON-able values, saved in every checkpoint's metadata.
The model's kind follows config.loss: "clip" (the contrastive losses; old
checkpoints without a kind are CLIPs), "causal_lm" (`models.limber.CaptionLM`:
"model" is the clip_jax.lm name, "overrides" its LMConfig overrides) and
"limber" (`models.limber.Limber`: "model" is the image tower's CLIP name,
"overrides" the `create_limber` arguments).
"""
from __future__ import annotations

from typing import Any

import ml_collections

from clip_jax.config import ConfigError, initial_logit_bias, initial_logit_scale
from clip_jax.models import create_model
from clip_jax.models.registry import model_spec
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

    The text tower takes the tokenizer's vocabulary size (a SentencePiece
    model's, or CLIP's BPE in a tower made for another vocabulary). With a
    tokenizer other than CLIP's BPE, a tower that pools at CLIP's EOT (the
    largest id) pools at the last non-pad token instead; SigLIP's tower, read
    at its last position, keeps its pooling. config.model_overrides.text has
    the last word. The clip_lite loss adds CLIP-Lite's critic heads
    (config.clip_lite.critic_dim); the declip loss adds DeCLIP's heads and a
    mask token to the vocabulary.
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
    spec = model_spec(config.model)
    vocab_size = get_tokenizer(config.data.tokenizer, config.data.context_length).vocab_size
    if config.data.tokenizer != "clip" or config.loss == "declip" or vocab_size != spec.text.vocab_size:
        text = {}
        if config.loss == "declip":  # one more row: the mask token
            vocab_size += 1
        if config.data.tokenizer != "clip" and spec.text.pool_type == "argmax":
            text["pool_type"] = "last"
        overrides["text"] = {"vocab_size": vocab_size, **text, **overrides.get("text", {})}
    return overrides


def lm_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The create_lm overrides of config.lm: its overrides, the tokenizer's vocabulary size unless given,
    config.dtype and config.remat_policy."""
    vocab_size = get_tokenizer(config.data.tokenizer, config.data.context_length).vocab_size
    given = config.lm.overrides.to_dict()
    if given.get("vocab_size", vocab_size) < vocab_size:
        raise ConfigError(
            f"config.lm.overrides.vocab_size: {given['vocab_size']} is smaller than the {config.data.tokenizer} "
            f"tokenizer's {vocab_size}"
        )
    return {"vocab_size": vocab_size, **given, "dtype": config.dtype, "remat_policy": config.remat_policy}


def limber_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`models.limber.create_limber` arguments besides the image model's name (config.model).

    The image tower is create_model(config.model, **config.model_overrides).visual (its 'text' overrides unused).
    """
    given = {k: v for k, v in config.model_overrides.to_dict().items() if k != "text"}  # the text tower is unused
    image = {"dtype": config.dtype, "remat_policy": config.remat_policy, "scan_layers": config.scan_layers, **given}
    return {
        "image_overrides": image, "lm": config.lm.name, "lm_overrides": lm_overrides(config),
        "prefix": config.limber.prefix, "num_prompts": config.limber.num_prompts,
    }


def model_kind(config: ml_collections.ConfigDict) -> str:
    """"clip", "causal_lm" or "limber": which module config.loss trains."""
    return config.loss if config.loss in ("causal_lm", "limber") else "clip"


def model_metadata(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> dict[str, Any]:
    """{"kind", "model", "overrides"}: what `clip_jax.weights.storage.model_from_metadata` rebuilds the module from."""
    name = config.lm.name if model_kind(config) == "causal_lm" else config.model
    return {"kind": model_kind(config), "model": name, "overrides": overrides}


def check_context_length(model: Any, config: ml_collections.ConfigDict) -> None:
    """config.data.context_length fits the model: the CLIP text tower's context, or the LM's learned positions."""
    length = config.data.context_length
    kind = model_kind(config)
    if kind == "clip":
        if length > model.text.context_length:
            raise ConfigError(
                f"config.data.context_length: {length} exceeds the model's {model.text.context_length}"
            )
        return
    if kind == "limber" and config.limber.prefix == "grid":
        from clip_jax.models.limber import grid_cells

        cells = grid_cells(model.visual)
        if config.limber.num_prompts not in (0, cells):
            raise ConfigError(
                f"config.limber.num_prompts: a grid prefix has one vector per grid cell of {config.model}, {cells}; "
                "set 0 (or that)"
            )
    lm = model.text.config
    needed = length - 1 + (model.prefix_length if kind == "limber" else 0)
    if lm.positions == "learned" and needed > lm.max_positions:
        prefix = f" after {model.prefix_length} prefix vectors" if kind == "limber" else ""
        raise ConfigError(
            f"config.data.context_length: the LM reads {length - 1} caption tokens{prefix}, {needed} positions, "
            f"but has {lm.max_positions} learned ones; raise config.lm.overrides.max_positions or shorten the captions"
        )


def model_from_config(config: ml_collections.ConfigDict) -> tuple[Any, dict[str, Any]]:
    """(model, the overrides that define it with its name, `model_metadata`) from the config.

    CLIP for the contrastive losses (create_model's overrides); `models.limber.CaptionLM` for "causal_lm"
    (create_lm's), `models.limber.Limber` for "limber" (create_limber's).
    """
    from clip_jax.models import limber  # not at import: clip_jax.lm imports clip_jax.models

    kind = model_kind(config)
    if kind == "causal_lm":
        overrides = lm_overrides(config)
        return limber.create_caption_lm(config.lm.name, **overrides), overrides
    if kind == "limber":
        overrides = limber_overrides(config)
        return limber.create_limber(config.model, **overrides), overrides
    overrides = model_overrides(config)
    return create_model(config.model, **overrides), overrides
