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
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import DTypeLike

from clip_jax.models.clip import CLIP
from clip_jax.models.declip_heads import DeclipHeads
from clip_jax.models.architectures import MODEL_SPECS, OPEN_CLIP_NAMES, ModelSpec, model_spec

# Entries of OpenAI's JIT archives and torch buffers that carry no parameters.
_IGNORED_KEYS = re.compile(r"(^|\.)(input_resolution|context_length|vocab_size|num_batches_tracked|attn_mask)$")
_OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
# Top-level parts of a clip_jax model that open_clip's CLIP has no place for (training-only heads).
_NOT_EXPORTED = ("image_critic", "text_critic", "heads")


class ConversionError(ValueError):
    """Raised when a state dict does not fit the model; the message names every bad key."""


def raise_misfits(missing: list[str], unexpected: list[str], errors: list[str], what: str = "state dict") -> None:
    """Raises ConversionError listing every missing and unexpected key and other error, if there are any."""
    problems = []
    if missing:
        problems.append(f"missing keys: {sorted(set(missing))}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    problems += errors
    if problems:
        raise ConversionError(f"{what} does not fit the model:\n  " + "\n  ".join(problems))


# A slice of a stacked PyTorch tensor: (index, parts) along its first axis (q, k, v of `in_proj_weight`).
Slot = tuple[int, int]

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


def _convert_leaf(key: str, value: np.ndarray, slot: Slot | None, target_shape: tuple[int, ...]) -> np.ndarray:
    """One PyTorch tensor in its clip_jax layout, shape-checked against `target_shape`."""
    value = np.asarray(value, dtype=np.float32)
    if slot is not None:
        index, parts = slot
        if value.shape[0] % parts:
            raise ConversionError(f"{key}: shape {value.shape} is not {parts} projections stacked on the first axis")
        value = np.split(value, parts, axis=0)[index]
    if key in _TIMM_UNIT_AXES and value.shape[: _TIMM_UNIT_AXES[key]] == (1,) * _TIMM_UNIT_AXES[key]:
        value = value.reshape(value.shape[_TIMM_UNIT_AXES[key] :])
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
    layout = torch_layout_of(model)
    consumed: set[str] = set()
    missing: list[str] = []
    errors: list[str] = []

    def convert(path: tuple[Any, ...], target: jax.ShapeDtypeStruct) -> np.ndarray | None:
        names = tuple(p.key for p in path)
        key, slot = _torch_name(names, layout)
        if key not in state_dict:
            missing.append(key)
            return None
        consumed.add(key)
        try:
            return _convert_leaf(key, state_dict[key], slot, target.shape)
        except ConversionError as e:
            errors.append(str(e))
            return None

    variables = {
        collection: jax.tree_util.tree_map_with_path(convert, tree)
        for collection, tree in expected.items()
    }
    unexpected = sorted(k for k in state_dict if k not in consumed and not _IGNORED_KEYS.search(k))
    raise_misfits(missing, unexpected, errors)
    scanned = getattr(model.text, "scan_layers", False)
    return {k: stack_layers(v) if scanned else v for k, v in variables.items()}


def _leaves(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """{path of dict keys: leaf} of a nested mapping."""
    return {tuple(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _host(x: Any) -> Any:
    """A C-contiguous numpy array; tracers (under jax.eval_shape) pass through."""
    return x if isinstance(x, jax.core.Tracer) else np.asarray(x, order="C")


def _concatenate(parts: list[Any]) -> Any:
    """Concatenates along the first axis, numpy arrays with numpy and tracers with jax.numpy."""
    return (jnp if isinstance(parts[0], jax.core.Tracer) else np).concatenate(parts)


def _torch_layout(path: tuple[str, ...], value: Any) -> Any:
    """A flax leaf in PyTorch's layout, q/k/v still apart: the inverse of `_convert_leaf`.

    conv kernel HWIO -> OIHW; Linear kernel (in, out) -> (out, in), where an
    attention kernel is first flattened to (in, out): [D, H, Dh] -> (D, H*Dh),
    out [H, Dh, D] -> (H*Dh, D); in-projection bias [H, Dh] -> (H*Dh,).
    """
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if path[-1] == "kernel":
        split = value.ndim - 1 if path[-2] == "out" else 1
        return value.reshape(int(np.prod(value.shape[:split])), -1).T
    if path[-1] == "bias" and value.ndim == 2:
        return value.reshape(-1)
    return value


def _check_fits(variables: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raises ConversionError naming every missing, unexpected or mis-shaped variable (unstacked layout)."""
    have = {"/".join(p): tuple(x.shape) for p, x in _leaves(variables).items()}
    want = {"/".join(p): tuple(x.shape) for p, x in _leaves(expected).items()}
    problems = []
    if missing := sorted(set(want) - set(have)):
        problems.append(f"missing variables: {missing}")
    if unexpected := sorted(set(have) - set(want)):
        problems.append(f"unexpected variables: {unexpected}")
    shared = sorted(set(have) & set(want))
    problems += [f"{p}: shape {have[p]}, model expects {want[p]}" for p in shared if have[p] != want[p]]
    if problems:
        raise ConversionError("variables do not fit the model:\n  " + "\n  ".join(problems))


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
    variables = {k: unstack_layers(jax.tree.map(_host, v)) for k, v in nn.meta.unbox(dict(variables)).items()}
    left_out = sorted({path[1] for path in _leaves(variables) if path[1] in _NOT_EXPORTED})
    variables = _without(variables, _NOT_EXPORTED)
    _check_fits(variables, _without(_expected_variables(model), _NOT_EXPORTED))
    layout = torch_layout_of(model)
    state_dict: dict[str, Any] = {}
    for (collection, *path), value in _leaves(variables).items():
        key, slot = _torch_name(tuple(path), layout)
        value = _torch_layout(tuple(path), value if dtype is None else value.astype(dtype))
        value = value.reshape((1,) * _TIMM_UNIT_AXES.get(key, 0) + value.shape)
        if slot is None:
            state_dict[key] = value
        else:  # the projections stacked on the first axis, in slot order (q, k, v)
            index, parts = slot
            state_dict.setdefault(key, [None] * parts)[index] = value
        if collection == "batch_stats" and path[-1] == "mean":
            state_dict[f"{key.rsplit('.', 1)[0]}.num_batches_tracked"] = np.zeros((), np.int64)
    state_dict = {k: _host(_concatenate(v) if isinstance(v, list) else v) for k, v in state_dict.items()}
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
