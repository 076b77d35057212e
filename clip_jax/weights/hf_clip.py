"""Hugging Face transformers' `CLIPModel` and `SiglipModel` <-> clip_jax models and variables.

    config, state_dict = read_pretrained(DIR)             # a save_pretrained directory
    spec = spec_from_config(config)                       # the clip_jax ModelSpec, at any size
    model = model_from_spec(spec)
    variables = from_transformers(state_dict, model)      # and back: to_transformers(variables, model),
    config = config_from_spec(spec, family_of(config))    # with the config.json of the model

A directory holds config.json and model.safetensors, or the shards a
model.safetensors.index.json lists. The model is built from config.json alone:
widths, layers, heads, patch and image size, context length, vocabulary, the
MLPs' width, activation (`quick_gelu`, exact `gelu`, or `gelu_pytorch_tanh` /
`gelu_new`: the tanh approximation) and LayerNorm eps of each tower, and the
projection width. Fields config.json leaves out take transformers' defaults
(`CONFIG_DEFAULTS`; tests/test_hf_clip.py compares them with transformers'
own, recorded by tests/fixtures/make_hf_clip_fixtures.py).

The towers map one to one: CLIP's ViT (class token, `pre_layrnorm`, pooled
class token through `visual_projection`) is clip_jax's OpenAI ViT, its text
tower read at the end-of-text token; SigLIP's ViT (patch-conv bias, no class
token, MAP `head` whose output is the embedding) is clip_jax's MAP-pooled ViT,
its bidirectional text tower read at the last position through `head`. A
clip_jax model transformers has no class for (a ModifiedResNet image tower,
CLIP-Lite's critics, DeCLIP's heads) ends the export with one line naming the
part (`UnsupportedPart`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

import numpy as np
from etils import epath
from numpy.typing import DTypeLike

from clip_jax.models.architectures import ModelSpec, TextSpec, VisionSpec
from clip_jax.models.clip import CLIP
from clip_jax.models.resnet import ModifiedResNet
from clip_jax.weights.torch_layout import (
    ConversionError, Slot, state_dict_from_variables, variables_from_state_dict,
)

FAMILIES = ("clip", "siglip")  # config.json's model_type
ARCHITECTURES = {"clip": "CLIPModel", "siglip": "SiglipModel"}

# transformers' defaults of the fields clip_jax reads (CLIPConfig / SiglipConfig and their tower configs).
CONFIG_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "clip": {
        "model": {"projection_dim": 512, "logit_scale_init_value": 2.6592},
        "text_config": {
            "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
            "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "eos_token_id": 49407,
        },
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        },
    },
    "siglip": {
        "model": {},
        "text_config": {
            "vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
            "num_attention_heads": 12, "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6, "projection_size": None,
        },
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
            "num_channels": 3, "image_size": 224, "patch_size": 16, "hidden_act": "gelu_pytorch_tanh",
            "layer_norm_eps": 1e-6, "vision_use_head": True,
        },
    },
}
# transformers' hidden_act -> clip_jax's activation; the first name of each is what the export writes.
_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
_HIDDEN_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}

# clip_jax names -> transformers', per path element; `attn` is `attention` in SigLIP's MAP head.
_RENAMES = {
    "visual": "vision_model", "text": "text_model", "transformer": "encoder", "ln_pre": "pre_layrnorm",
    "ln_post": "post_layernorm", "ln_final": "final_layer_norm", "conv1": "embeddings.patch_embedding",
    "token_embedding": "embeddings.token_embedding", "class_embedding": "embeddings.class_embedding",
    "positional_embedding": "embeddings.position_embedding.weight", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
    "attn": "self_attn", "c_fc": "fc1", "c_proj": "fc2", "out": "out_proj", "query": "q_proj", "key": "k_proj",
    "value": "v_proj", "attn_pool": "head", "latent": "probe", "norm": "layernorm", "text_projection": "head",
    "kernel": "weight", "scale": "weight", "embedding": "weight",
}
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
_VISION_FIELDS = ("class_token", "pre_norm", "patch_bias")
# Tensors with leading unit axes that clip_jax leaves out, per family.
_UNIT_AXES = {"clip": {}, "siglip": {"vision_model.head.probe": 2, "logit_scale": 1, "logit_bias": 1}}
# Buffers transformers may have saved that carry no parameters.
_IGNORED_KEYS = re.compile(r"\.position_ids$")
_INDEX_FILE = "model.safetensors.index.json"


class UnsupportedPart(ConversionError):
    """A part of a clip_jax model that transformers' CLIPModel / SiglipModel has no place for."""


def read_pretrained(directory: epath.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json, the state dict as numpy arrays) of a transformers `save_pretrained` directory."""
    from safetensors.numpy import load

    directory = epath.Path(directory)
    config = read_config(directory)
    if (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    elif (directory / _INDEX_FILE).is_file():
        files = sorted(set(json.loads((directory / _INDEX_FILE).read_text())["weight_map"].values()))
    else:
        raise FileNotFoundError(
            f"{directory}: no model.safetensors or {_INDEX_FILE} (clip_jax reads transformers' safetensors weights; "
            "save the model with save_pretrained(..., safe_serialization=True))"
        )
    state_dict: dict[str, np.ndarray] = {}
    for name in files:
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: {_INDEX_FILE} lists {name}, which is not there")
        state_dict.update(load((directory / name).read_bytes()))
    return config, state_dict


def read_config(directory: epath.PathLike) -> dict[str, Any]:
    """config.json of a transformers CLIPModel / SiglipModel directory; the family must be one clip_jax reads."""
    path = epath.Path(directory) / "config.json"
    config = json.loads(path.read_text())
    family_of(config, str(path))
    return config


def is_pretrained_dir(directory: epath.PathLike) -> bool:
    """Whether `directory` looks like a transformers save_pretrained directory (it has a config.json)."""
    return (epath.Path(directory) / "config.json").is_file()


def family_of(config: Mapping[str, Any], where: str = "config.json") -> str:
    """'clip' or 'siglip': config.json's model_type."""
    family = config.get("model_type")
    if family not in FAMILIES:
        raise ConversionError(
            f"{where}: model_type {family!r}; clip_jax reads transformers' CLIPModel ('clip') and SiglipModel "
            "('siglip') checkpoints"
        )
    return family


def _fields(config: Mapping[str, Any], family: str, tower: str) -> dict[str, Any]:
    """A tower's config (or the model's, tower='model') with transformers' defaults for what it leaves out."""
    given = config if tower == "model" else config.get(tower) or {}
    return {k: given.get(k, default) for k, default in CONFIG_DEFAULTS[family][tower].items()}


def _square(value: int | list[int], field: str) -> int:
    """An image or patch size that transformers may give as [H, W]; clip_jax's are square."""
    sizes = set(value) if isinstance(value, (list, tuple)) else {value}
    if len(sizes) != 1:
        raise ConversionError(f"config.json: vision_config.{field} = {value}; clip_jax's images and patches are square")
    return int(sizes.pop())


def _mlp_ratio(hidden: int, width: int) -> float:
    """The ratio whose int(width * ratio) is `hidden` (clip_jax's models compute the MLP width that way)."""
    ratio = hidden / width
    while int(width * ratio) < hidden:  # hidden / width * width can fall a rounding step short of hidden
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _activation(config: Mapping[str, Any]) -> str:
    """The clip_jax activation of both towers' hidden_act."""
    acts = {tower: config[tower]["hidden_act"] for tower in ("vision_config", "text_config")}
    for tower, act in acts.items():
        if act not in _ACTIVATIONS:
            raise ConversionError(f"config.json: {tower}.hidden_act = {act!r}; clip_jax has {sorted(_ACTIVATIONS)}")
    names = {_ACTIVATIONS[act] for act in acts.values()}
    if len(names) != 1:
        raise ConversionError(f"config.json: the towers' hidden_act differ ({acts}); clip_jax's towers share one")
    return names.pop()


def spec_from_config(config: Mapping[str, Any]) -> ModelSpec:
    """The clip_jax ModelSpec of a transformers CLIPConfig / SiglipConfig dict (config.json)."""
    family = family_of(config)
    model = _fields(config, family, "model")
    vision = _fields(config, family, "vision_config")
    text = _fields(config, family, "text_config")
    if vision["num_channels"] != 3:
        raise ConversionError(f"config.json: vision_config.num_channels = {vision['num_channels']}; clip_jax's are RGB")
    activation = _activation({"vision_config": vision, "text_config": text})
    vision_spec = VisionSpec(
        image_size=_square(vision["image_size"], "image_size"),
        width=vision["hidden_size"],
        layers=vision["num_hidden_layers"],
        patch_size=_square(vision["patch_size"], "patch_size"),
        head_width=vision["hidden_size"] // vision["num_attention_heads"],
        mlp_ratio=_mlp_ratio(vision["intermediate_size"], vision["hidden_size"]),
        ln_eps=vision["layer_norm_eps"],
    )
    text_spec = TextSpec(
        width=text["hidden_size"],
        heads=text["num_attention_heads"],
        layers=text["num_hidden_layers"],
        context_length=text["max_position_embeddings"],
        vocab_size=text["vocab_size"],
        mlp_ratio=_mlp_ratio(text["intermediate_size"], text["hidden_size"]),
        ln_eps=text["layer_norm_eps"],
    )
    if family == "clip":
        if text["eos_token_id"] not in (2, text["vocab_size"] - 1):
            raise ConversionError(
                f"config.json: text_config.eos_token_id = {text['eos_token_id']}; clip_jax reads CLIP's text at the "
                f"end-of-text token as the largest id ({text['vocab_size'] - 1}), as CLIP's vocabulary has it"
            )
        return ModelSpec(
            model["projection_dim"], vision_spec, text_spec, activation=activation,
            init_logit_scale=model["logit_scale_init_value"],
        )
    if not vision["vision_use_head"]:
        raise ConversionError(
            "config.json: vision_config.vision_use_head = false; a SigLIP image embedding needs the head"
        )
    embed_dim = text["projection_size"] or text["hidden_size"]
    if embed_dim != vision["hidden_size"]:
        raise ConversionError(
            f"config.json: text_config.projection_size = {embed_dim} but vision_config.hidden_size = "
            f"{vision['hidden_size']}; SigLIP's image embedding is its MAP head's output, so they must be equal"
        )
    return ModelSpec(
        embed_dim,
        dataclasses.replace(vision_spec, class_token=False, pre_norm=False, patch_bias=True, pool="map"),
        dataclasses.replace(text_spec, pool_type="end", causal=False, proj_bias=True),
        activation=activation,
        init_logit_scale=math.log(10.0),
        init_logit_bias=-10.0,
    )


def config_from_spec(spec: ModelSpec, family: str, **extra: Any) -> dict[str, Any]:
    """config.json of the transformers model of `spec` (CLIPConfig / SiglipConfig's layout), with `extra` fields
    (e.g. the tokenizer's pad and end-of-text ids) in text_config."""
    v, t = spec.vision, spec.text
    act = _HIDDEN_ACT[spec.activation]
    vision = {
        "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio), "num_hidden_layers": v.layers,
        "num_attention_heads": v.width // v.head_width, "num_channels": 3, "image_size": v.image_size,
        "patch_size": v.patch_size, "hidden_act": act, "layer_norm_eps": v.ln_eps,
    }
    text = {
        "vocab_size": t.vocab_size, "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio),
        "num_hidden_layers": t.layers, "num_attention_heads": t.heads, "max_position_embeddings": t.context_length,
        "hidden_act": act, "layer_norm_eps": t.ln_eps, **extra,
    }
    if family == "clip":
        model = {"projection_dim": spec.embed_dim, "logit_scale_init_value": spec.init_logit_scale}
        vision["projection_dim"] = text["projection_dim"] = spec.embed_dim
    else:
        model = {}
        text["projection_size"] = spec.embed_dim
    return {
        "architectures": [ARCHITECTURES[family]], "model_type": family, **model,
        "text_config": text, "vision_config": vision,
    }


def token_ids(spec: ModelSpec, family: str) -> dict[str, int]:
    """The text config's token ids of a model trained with clip_jax's tokenizers: CLIP's start- and end-of-text
    ids are its vocabulary's last two, and CLIP's end-of-text is the largest id, where clip_jax reads the text
    (transformers reads it at the first `eos_token_id`); SigLIP's text is read at the last position, whatever
    the ids, so transformers' defaults stand."""
    if family == "siglip":
        return {}
    vocab_size = spec.text.vocab_size
    return {"bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1}


def family_of_model(model: CLIP) -> str:
    """The transformers family of a clip_jax model, or UnsupportedPart naming what transformers has no class for."""
    if isinstance(model.visual, ModifiedResNet):
        raise UnsupportedPart(
            "transformers has no CLIPModel or SiglipModel with a ModifiedResNet image tower (RN50, ...)"
        )
    parts = [name for name in ("image_critic", "text_critic", "heads") if getattr(model, name) is not None]
    if parts:
        raise UnsupportedPart(
            f"transformers' CLIPModel and SiglipModel have no place for {', '.join(parts)} (training-only heads of "
            "CLIP-Lite and DeCLIP); export the towers with `--format open_clip`, which leaves them out"
        )
    family = "siglip" if model.visual.pool == "map" else "clip"
    siglip = family == "siglip"
    expected = {
        "class_token": not siglip, "pre_norm": not siglip, "patch_bias": siglip,
        "pool_type": "end" if siglip else "argmax", "causal": not siglip, "proj_bias": siglip,
    }
    actual = {k: getattr(model.visual if k in _VISION_FIELDS else model.text, k) for k in expected}
    if differ := {k: v for k, v in actual.items() if v != expected[k]}:
        raise UnsupportedPart(f"transformers' {ARCHITECTURES[family]} has no model with {differ} (it has {expected})")
    if (model.init_logit_bias is not None) != siglip:
        has = "a logit bias, which CLIPModel lacks" if not siglip else "no logit bias, which SiglipModel needs"
        raise UnsupportedPart(f"the model has {has}")
    return family


def _hf_name(path: tuple[str, ...]) -> tuple[str, Slot | None]:
    """The transformers key of a clip_jax leaf (unstacked layout), and its slot in the MAP head's stacked q/k/v."""
    if path == ("visual", "proj"):
        return "visual_projection.weight", None
    if path == ("text", "text_projection"):  # CLIP's bias-free projection (SigLIP's is text_model.head)
        return "text_projection.weight", None
    in_head = "attn_pool" in path
    parts: list[str] = []
    slot = None
    for i, part in enumerate(path):
        if m := re.fullmatch(r"resblocks_(\d+)", part):
            parts += ["layers", m.group(1)]
        elif in_head and part in _QKV_INDEX:  # nn.MultiheadAttention's in_proj_weight / in_proj_bias
            slot = (_QKV_INDEX[part], 3)
        elif slot is not None and i == len(path) - 1:
            parts.append(f"in_proj_{_RENAMES.get(part, part)}")
        elif in_head and part == "attn":
            parts.append("attention")
        else:
            parts.append(_RENAMES.get(part, part))
    return ".".join(parts), slot


def from_transformers(state_dict: Mapping[str, Any], model: CLIP) -> dict[str, dict[str, Any]]:
    """clip_jax variables of `model` (built by `spec_from_config`) from a CLIPModel / SiglipModel state dict.

    Raises ConversionError naming every missing, unexpected or mis-shaped key.
    """
    return variables_from_state_dict(state_dict, model, _hf_name, _IGNORED_KEYS)


def to_transformers(variables: Mapping[str, Any], model: CLIP, dtype: DTypeLike | None = np.float32) -> dict[str, Any]:
    """The CLIPModel / SiglipModel state dict of `model` holding `variables` (plain or scanned layout): the inverse
    of `from_transformers`, with exactly the keys and shapes of transformers' model of `config_from_spec`.

    Raises UnsupportedPart naming a part transformers has no class for.
    """
    family = family_of_model(model)
    return state_dict_from_variables(variables, model, _hf_name, _UNIT_AXES[family], dtype)
