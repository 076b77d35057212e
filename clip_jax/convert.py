"""Import OpenAI / open_clip PyTorch weights into clip_jax variables.

`from_torch_state_dict(state_dict, model)` walks the parameters the model
expects, finds each one's PyTorch tensor by name, converts its layout
(Linear (out, in) -> (in, out) with heads split, conv OIHW -> HWIO, q/k/v
from the stacked `in_proj_weight`), checks its shape and reports every
missing and unexpected key by its PyTorch name.
"""
from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.models.clip import CLIP

# Entries of OpenAI's JIT archives and torch buffers that carry no parameters.
_IGNORED_KEYS = re.compile(r"(^|\.)(input_resolution|context_length|vocab_size|num_batches_tracked|attn_mask)$")
_OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}


class ConversionError(ValueError):
    """Raised when a state dict does not fit the model; the message names every bad key."""


def _torch_name(path: tuple[str, ...]) -> tuple[str, int | None]:
    """The PyTorch key holding a flax leaf, and the q/k/v slice of a stacked in-projection.

    path is a flax path in the unstacked layout, e.g.
    ('visual', 'transformer', 'resblocks_3', 'attn', 'query', 'kernel').
    """
    if path[0] == "text":  # open_clip keeps the text tower at the top level
        path = path[1:]
    parts: list[str] = []
    qkv = None
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
            qkv = _QKV_INDEX[part]
        elif part == "out":
            parts.append("c_proj" if "attnpool" in path else "out_proj")
        elif last and qkv is not None:
            parts.append(f"in_proj_{'weight' if part == 'kernel' else 'bias'}")
        elif last:
            parts.append(
                {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean", "var": "running_var"}
                .get(part, part)
            )
        else:
            parts.append(part)
    return ".".join(parts), qkv


def _convert_leaf(key: str, value: np.ndarray, qkv: int | None, target_shape: tuple[int, ...]) -> np.ndarray:
    """One PyTorch tensor in its clip_jax layout, shape-checked against `target_shape`."""
    value = np.asarray(value, dtype=np.float32)
    if qkv is not None:
        if value.shape[0] % 3:
            raise ConversionError(f"{key}: shape {value.shape} is not q, k, v stacked on the first axis")
        value = np.split(value, 3, axis=0)[qkv]
    if value.ndim == 4 and len(target_shape) == 4:  # conv OIHW -> HWIO
        value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2 and key.endswith("weight") and len(target_shape) >= 2 and "embedding" not in key:
        value = value.T  # nn.Linear (out, in) -> (in, out)
        in_dim, out_dim = value.shape
        heads_first = target_shape[-1] == out_dim and int(np.prod(target_shape[:-1])) == in_dim
        heads_last = target_shape[0] == in_dim and int(np.prod(target_shape[1:])) == out_dim
        if heads_first or heads_last:
            value = value.reshape(target_shape)
    elif value.ndim == 1 and len(target_shape) == 2 and value.size == np.prod(target_shape):
        value = value.reshape(target_shape)  # in-projection bias -> (heads, head_dim)
    if value.shape != tuple(target_shape):
        raise ConversionError(f"{key}: shape {value.shape} after conversion, model expects {tuple(target_shape)}")
    return value


def stack_layers(tree: Any) -> Any:
    """Stacks `resblocks_0..L-1` subtrees into one `resblocks` subtree with a leading layer axis."""
    if not isinstance(tree, Mapping):
        return tree
    blocks = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in tree.items() if re.fullmatch(r"resblocks_\d+", k))
    out = {k: stack_layers(v) for k, v in tree.items() if not re.fullmatch(r"resblocks_\d+", k)}
    if blocks:
        out["resblocks"] = jax.tree.map(lambda *xs: np.stack(xs), *[v for _, v in blocks])
    return out


def unstack_layers(tree: Any) -> Any:
    """Inverse of `stack_layers`: `resblocks` [L, ...] -> `resblocks_0` ... `resblocks_{L-1}`."""
    if not isinstance(tree, Mapping):
        return tree
    out = {k: unstack_layers(v) for k, v in tree.items() if k != "resblocks"}
    if "resblocks" in tree:
        stacked = tree["resblocks"]
        num_layers = jax.tree.leaves(stacked)[0].shape[0]
        for i in range(num_layers):
            out[f"resblocks_{i}"] = jax.tree.map(lambda x, i=i: _take(x, i), stacked)
    return out


def _take(x: Any, i: int) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def _expected_variables(model: CLIP) -> dict[str, Any]:
    """Shapes of the model's variables in the unstacked layout (no memory used)."""
    visual = model.visual
    size = visual.image_size
    context = model.text.context_length
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, context), jnp.int32)
    )
    return {k: unstack_layers(nn.meta.unbox(v)) for k, v in shapes.items()}


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
    if origin == "openai" and not model.text.quick_gelu:
        warnings.warn(
            "OpenAI weights were trained with QuickGELU but this model uses exact GELU: use the "
            "'-quickgelu' model name (e.g. ViT-B-32-quickgelu), or accuracy silently drops.",
            stacklevel=2,
        )
    expected = _expected_variables(model)
    consumed: set[str] = set()
    missing: list[str] = []
    errors: list[str] = []

    def convert(path: tuple[Any, ...], target: jax.ShapeDtypeStruct) -> np.ndarray | None:
        names = tuple(p.key for p in path)
        key, qkv = _torch_name(names)
        if key not in state_dict:
            missing.append(key)
            return None
        consumed.add(key)
        try:
            return _convert_leaf(key, state_dict[key], qkv, target.shape)
        except ConversionError as e:
            errors.append(str(e))
            return None

    variables = {
        collection: jax.tree_util.tree_map_with_path(convert, tree)
        for collection, tree in expected.items()
    }
    unexpected = sorted(k for k in state_dict if k not in consumed and not _IGNORED_KEYS.search(k))
    problems = []
    if missing:
        problems.append(f"missing keys: {sorted(set(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    problems += errors
    if problems:
        raise ConversionError("state dict does not fit the model:\n  " + "\n  ".join(problems))
    scanned = getattr(model.text, "scan_layers", False)
    return {k: stack_layers(v) if scanned else v for k, v in variables.items()}
