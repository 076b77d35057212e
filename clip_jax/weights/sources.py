"""Where weights come from: one reader for every layout clip_jax takes in whole, with the model they fit.

    variables, metadata = read_weights(PATH)
    model = storage.model_from_metadata(metadata)

PATH is
  clip_jax's own: a weights directory (import_weights, `storage.save_variables`) or a training run's
    workdir (its newest checkpoint);
  a transformers `save_pretrained` directory of a CLIPModel or a SiglipModel (config.json with
    model.safetensors or a sharded index; `weights.hf_clip`): the model is built from config.json;
  a big_vision SigLIP `.npz` (`weights.big_vision`): the model is built from the arrays' shapes.

`clip_jax.load`, `--config.init_from`, LiT's `--config.lit.init_image_from` and `import_weights` all
read through it. metadata holds "model" and "overrides" (a registered name and the fields that make it
this model), "kind", "origin" and "source", and "tokenizer": the spec of the texts' tokenizer where the
weights come with one (`clip_jax.tokenizers.get_tokenizer`). A weights directory written by
`import_weights` from transformers keeps the tokenizer's files in its `tokenizer/` folder: "hf:tokenizer"
there is relative to the directory.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from etils import epath

from clip_jax.models.architectures import ModelSpec, model_from_spec
from clip_jax.runtime import paths
from clip_jax.tokenizers.pretrained_dir import SPEC_PREFIX, directory_of_spec, pretrained_tokenizer_spec
from clip_jax.weights import big_vision, hf_clip, storage
from clip_jax.weights.torch_layout import ConversionError

TOKENIZER_FOLDER = "tokenizer"  # where an imported directory keeps the tokenizer's files
# The registered model whose fields a converted model's overrides replace, per family.
_BASE_MODELS = {"clip": "ViT-B-32", "siglip": "ViT-SO400M-14-SigLIP"}
_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def read_weights(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as host arrays, metadata) of the weights at `path`, in whichever layout (module docstring)."""
    resolved = paths.resolve(path)
    if resolved.is_dir() and hf_clip.is_pretrained_dir(resolved):
        config, state_dict = hf_clip.read_pretrained(resolved)
        return _converted(config, state_dict, "transformers", path, _tokenizer_of(resolved, config))
    if str(path).endswith(".npz"):
        arrays = read_npz(resolved)
        if not big_vision.is_big_vision(arrays):
            raise ConversionError(
                f"{path}: not a big_vision SigLIP checkpoint (no arrays under img/ and txt/); a PyTorch state dict "
                "saved as .npz needs its model named: clip_jax.load(PATH, model=NAME), import_weights --model NAME"
            )
        config, state_dict = big_vision.to_transformers(arrays)
        return _converted(config, state_dict, "big_vision", path, None)
    variables, metadata = storage.load_variables(path)
    if directory_of_spec(metadata.get("tokenizer")) == TOKENIZER_FOLDER:
        metadata = {**metadata, "tokenizer": f"{SPEC_PREFIX}{resolved / TOKENIZER_FOLDER}"}
    return variables, metadata


def read_npz(path: epath.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, local or in a bucket."""
    with epath.Path(path).open("rb") as file, np.load(file) as data:
        return dict(data)


def spec_metadata(spec: ModelSpec, family: str) -> dict[str, Any]:
    """{"model", "overrides"} that rebuild `spec` through `create_model`: the family's registered model with
    every field of `spec` as an override."""
    fields = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    overrides = {
        **{k: v for k, v in fields.items() if k not in ("vision", "text", "dtype")},
        "vision": dataclasses.asdict(spec.vision),
        "text": dataclasses.asdict(spec.text),
    }
    return {"model": _BASE_MODELS[family], "overrides": overrides}


def _tokenizer_of(directory: epath.Path, config: dict[str, Any]) -> str | None:
    """The tokenizer spec of a transformers directory: its files' ("clip" for CLIP's BPE), CLIP's BPE for a
    CLIP model of CLIP's vocabulary without them, else None (the texts need a tokenizer given to them)."""
    try:
        return pretrained_tokenizer_spec(str(directory))
    except FileNotFoundError:
        default = hf_clip.CONFIG_DEFAULTS["clip"]["text_config"]["vocab_size"]
        vocab_size = (config.get("text_config") or {}).get("vocab_size", default)
        return "clip" if config.get("model_type") == "clip" and vocab_size == 49408 else None


def _converted(
    config: dict[str, Any], state_dict: dict[str, np.ndarray], origin: str, path: str, tokenizer: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Variables and metadata of a transformers-layout config and state dict."""
    family = hf_clip.family_of(config)
    spec = hf_clip.spec_from_config(config)
    variables = hf_clip.from_transformers(state_dict, model_from_spec(spec))
    text_config = config.get("text_config") or {}
    metadata = {
        **spec_metadata(spec, family), "kind": "clip", "origin": origin, "source": str(path),
        "tokenizer": tokenizer, "token_ids": {k: text_config[k] for k in _TOKEN_IDS if k in text_config},
    }
    return variables, metadata
