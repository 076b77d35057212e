"""OpenAI / open_clip PyTorch weights to clip_jax variables and back.

`from_torch_state_dict(state_dict, model)` walks the parameters the model
expects, finds each one's PyTorch tensor by name, converts its layout
(Linear (out, in) -> (in, out) with heads split, conv OIHW -> HWIO, q/k/v
from the stacked `in_proj_weight`), checks its shape and reports every
missing and unexpected key by its PyTorch name. SigLIP models (a MAP-pooled
ViT) take open_clip's CustomTextCLIP layout, the image tower under timm's
names (`torch_layout_of`).

`to_torch_state_dict(variables, model)` is its exact inverse on the same name
mapping: the keys, shapes and buffers of open_clip's state dict of the same
architecture (`open_clip_name` says which), for plain or scanned layouts.
Training-only parts open_clip has no place for (CLIP-Lite's critic heads,
DeCLIP's heads and its mask-token row of the vocabulary) are left out with a
warning.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from numpy.typing import DTypeLike

from clip_jax.models.clip import CLIP
from clip_jax.models.declip_heads import DeclipHeads
from clip_jax.models.architectures import MODEL_SPECS, OPEN_CLIP_NAMES, ModelSpec, model_spec
from clip_jax.weights.torch_layout import Slot, state_dict_from_variables, variables_from_state_dict

# Entries of OpenAI's JIT archives and torch buffers that carry no parameters.
_IGNORED_KEYS = re.compile(r"(^|\.)(input_resolution|context_length|vocab_size|num_batches_tracked|attn_mask)$")
_OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
# Top-level parts of a clip_jax model that open_clip's CLIP has no place for (training-only heads).
_NOT_EXPORTED = ("image_critic", "text_critic", "heads")


# open_clip's names of a clip_jax ViT in OpenAI's layout -> timm's names in a CustomTextCLIP's trunk
# (`visual.trunk.*`), applied in order; the MAP head's q and kv projections are handled in `_timm_name`.
_TIMM_RENAMES = (
    (r"^visual\.attn_pool\.attn\.out_proj\.", "visual.trunk.attn_pool.proj."),
    (r"^visual\.attn_pool\.", "visual.trunk.attn_pool."),
    (r"^visual\.conv1\.", "visual.trunk.patch_embed.proj."),
    (r"^visual\.positional_embedding$", "visual.trunk.pos_embed"),
    (r"^visual\.ln_post\.", "visual.trunk.norm."),
    (r"^visual\.transformer\.resblocks\.", "visual.trunk.blocks."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"\.attn\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
)
# timm tensors with leading unit axes that clip_jax leaves out: [1, N, D] positions, the [1, 1, D] latent query.
_TIMM_UNIT_AXES = {"visual.trunk.pos_embed": 1, "visual.trunk.attn_pool.latent": 2}


def torch_layout_of(model: CLIP) -> str:
    """Which open_clip module layout `model`'s state dict has.

    'openai': open_clip's CLIP (OpenAI's names, the text tower at the top level). 'siglip': a
    CustomTextCLIP whose image tower is a timm ViT (a MAP-pooled clip_jax ViT): keys `visual.trunk.*`
    under timm's names and `text.*`.
    """
    return "siglip" if getattr(model.visual, "pool", None) == "map" else "openai"


def _timm_name(key: str, slot: Slot | None) -> tuple[str, Slot | None]:
    """A visual key in OpenAI's layout -> its timm trunk name; the MAP head's q is its own tensor, k and v
    are stacked in `kv`."""
    if m := re.fullmatch(r"visual\.attn_pool\.attn\.in_proj_(weight|bias)", key):
        index = slot[0]
        if index == 0:
            return f"visual.trunk.attn_pool.q.{m.group(1)}", None
        return f"visual.trunk.attn_pool.kv.{m.group(1)}", (index - 1, 2)
    for pattern, replacement in _TIMM_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key, slot


def _torch_name(path: tuple[str, ...], layout: str = "openai") -> tuple[str, Slot | None]:
    """The PyTorch key holding a flax leaf, and its slice of a stacked projection (q/k/v).

    path is a flax path in the unstacked layout, e.g.
    ('visual', 'transformer', 'resblocks_3', 'attn', 'query', 'kernel'); layout: `torch_layout_of`.
    """
    if path[0] == "text" and layout == "openai":  # open_clip's CLIP keeps the text tower at the top level
        path = path[1:]
    parts: list[str] = []
    slot = None
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if m := re.fullmatch(r"(resblocks|layer\d)_(\d+)", part):
            parts += [m.group(1), m.group(2)]
        elif part in ("downsample_conv", "downsample_bn"):
            parts += ["downsample", "0" if part == "downsample_conv" else "1"]
        elif part == "attn" and "attnpool" in path:
            continue  # AttentionPool2d holds q_proj/k_proj/v_proj/c_proj directly
        elif part in _QKV_INDEX and "attnpool" in path:
            parts.append(f"{part[0]}_proj")
        elif part in _QKV_INDEX:
            slot = (_QKV_INDEX[part], 3)
        elif part == "out":
            parts.append("c_proj" if "attnpool" in path else "out_proj")
        elif last and slot is not None:
            parts.append(f"in_proj_{'weight' if part == 'kernel' else 'bias'}")
        elif last:
            parts.append(
                {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean", "var": "running_var"}
                .get(part, part)
            )
        else:
            parts.append(part)
    key = ".".join(parts)
    if layout == "siglip" and path[0] == "visual":
        return _timm_name(key, slot)
    return key, slot


def is_openai_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """OpenAI's released archives carry these metadata entries; open_clip's don't."""
    return all(k in state_dict for k in _OPENAI_MARKERS)


def from_torch_state_dict(
    state_dict: Mapping[str, Any], model: CLIP, origin: str | None = None
) -> dict[str, dict[str, Any]]:
    """Flax variables ({'params', and 'batch_stats' for ResNets}) from a PyTorch state dict.

    state_dict: names -> arrays (numpy, fp16 or fp32) with OpenAI / open_clip
    key names. origin: 'openai' or 'open_clip' where known (OpenAI's archives
    are recognised by their metadata entries); OpenAI weights were trained with
    QuickGELU, so loading them into a GELU model warns. Raises ConversionError
    naming every missing, unexpected or mis-shaped key.
    """
    origin = origin or ("openai" if is_openai_state_dict(state_dict) else None)
    if origin == "openai" and model.text.activation != "quick_gelu":
        warnings.warn(
            "OpenAI weights were trained with QuickGELU but this model uses exact GELU: use the "
            "'-quickgelu' model name (e.g. ViT-B-32-quickgelu), or accuracy silently drops.",
            stacklevel=2,
        )
    layout = torch_layout_of(model)
    return variables_from_state_dict(state_dict, model, lambda path: _torch_name(path, layout), _IGNORED_KEYS)


def _without(variables: Mapping[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
    """variables less the top-level entries `parts` of every collection."""
    return {c: {k: v for k, v in tree.items() if k not in parts} for c, tree in variables.items()}


def _warn_left_out(model: CLIP, parts: list[str]) -> None:
    """Names what the export leaves out: training-only heads and DeCLIP's mask-token row."""
    if isinstance(model.heads, DeclipHeads):
        parts = [*parts, "token_embedding's last row (DeCLIP's mask token, which real text never holds)"]
    if not parts:
        return
    note = ""
    if {"image_critic", "text_critic"} & set(parts):
        note = "; encode_image / encode_text of the exported model are the towers' outputs, before the critic heads"
    warnings.warn(
        f"left out of the open_clip state dict, which has no place for them: {', '.join(parts)}{note}", stacklevel=3
    )


def to_torch_state_dict(
    variables: Mapping[str, Any], model: CLIP, dtype: DTypeLike | None = np.float32
) -> dict[str, np.ndarray]:
    """open_clip's state dict of `model`'s architecture holding `variables`: the inverse of `from_torch_state_dict`.

    variables: {'params', maybe 'batch_stats'} in the plain or the scanned
    (stacked `resblocks`) layout, numpy or jax arrays of any float dtype.
    Returns PyTorch names -> numpy arrays cast to `dtype` (None: as they are),
    plus each BatchNorm's `num_batches_tracked` (int64 0, clip_jax keeps no
    count), with exactly the keys and shapes of `open_clip.create_model(
    open_clip_name(...)).state_dict()`. open_clip's attention mask is not
    persistent and OpenAI's metadata entries are left out. CLIP-Lite's critic
    heads and DeCLIP's heads (with the mask-token row that DeCLIP adds to the
    vocabulary) are left out with a warning. Traceable: under jax.eval_shape
    it gives the shapes without arrays. Raises ConversionError naming every
    variable that does not fit the model.
    """
    variables = nn.meta.unbox(dict(variables))
    left_out = sorted({part for tree in variables.values() for part in tree if part in _NOT_EXPORTED})
    layout = torch_layout_of(model)
    state_dict = state_dict_from_variables(
        _without(variables, _NOT_EXPORTED), model.clone(image_critic=None, text_critic=None, heads=None), lambda path: _torch_name(path, layout),
        _TIMM_UNIT_AXES, dtype,
    )
    if isinstance(model.heads, DeclipHeads):
        state_dict["token_embedding.weight"] = state_dict["token_embedding.weight"][:-1]
    _warn_left_out(model, left_out)
    return state_dict


def _open_clip_architecture(spec: ModelSpec) -> ModelSpec:
    """`spec` less what changes no tensor of open_clip's state dict: compute dtype, remat, scan,
    initial values, the heads left out of exports (and DeCLIP's mask-token row)."""
    mask_row = int(spec.declip_projection_dim is not None)
    return dataclasses.replace(
        spec,
        text=dataclasses.replace(spec.text, vocab_size=spec.text.vocab_size - mask_row),
        dtype=jnp.float32, remat_policy="none", scan_layers=False, init_logit_scale=0.0, init_logit_bias=None,
        critic_dim=None, declip_projection_dim=None,
    )


def open_clip_name(name: str, overrides: Mapping[str, Any] | None = None) -> str | None:
    """The open_clip model name whose state dict `create_model(name, **overrides)` exports to; None: none has it.

    open_clip has every registered architecture under clip_jax's name (registry.OPEN_CLIP_NAMES);
    the small test sizes have no open_clip name (build open_clip.model.CLIP of the same sizes).
    A model with a logit bias needs `init_logit_bias=` in open_clip.create_model.
    """
    target = _open_clip_architecture(model_spec(name, **dict(overrides or {})))
    return next((n for n in OPEN_CLIP_NAMES if _open_clip_architecture(MODEL_SPECS[n]) == target), None)
