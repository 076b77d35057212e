"""PyTorch state dicts <-> clip_jax variables, given how each parameter is named on the PyTorch side.

A naming maps a flax path in the unstacked layout, e.g.
('visual', 'transformer', 'resblocks_3', 'attn', 'query', 'kernel'), to the
PyTorch key holding it and its slot in a stacked projection (q, k, v of
`in_proj_weight`). The layouts themselves are generic: Linear (out, in) ->
(in, out) with attention heads split, conv OIHW -> HWIO, leading unit axes
([1, N, D] positions, [1, 1, D] queries, [1] scalars) dropped, every tensor
shape-checked. `variables_from_state_dict` and `state_dict_from_variables` are
exact inverses on one naming; open_clip's names are in `weights.open_clip`,
transformers' in `weights.transformers`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import DTypeLike

from clip_jax.models.clip import CLIP

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

def convert_leaf(key: str, value: np.ndarray, slot: Slot | None, target_shape: tuple[int, ...]) -> np.ndarray:
    """One PyTorch tensor in its clip_jax layout, shape-checked against `target_shape`."""
    value = np.asarray(value, dtype=np.float32)
    if slot is not None:
        index, parts = slot
        if value.shape[0] % parts:
            raise ConversionError(f"{key}: shape {value.shape} is not {parts} projections stacked on the first axis")
        value = np.split(value, parts, axis=0)[index]
    extra = value.ndim - len(target_shape)  # leading unit axes clip_jax leaves out: [1, N, D] positions, ...
    if extra > 0 and value.shape[:extra] == (1,) * extra:
        value = value.reshape(value.shape[extra:])
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


def in_layout_of(variables: Mapping[str, Any], model: CLIP) -> dict[str, Any]:
    """variables with their layer stacks in `model`'s layout: stacked when it scans its layers, else apart."""
    layout = stack_layers if getattr(model.text, "scan_layers", False) else unstack_layers
    return {k: layout(v) for k, v in variables.items()}


def _take(x: Any, i: int) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def expected_variables(model: CLIP) -> dict[str, Any]:
    """Shapes of the model's variables in the unstacked layout (no memory used)."""
    visual = model.visual
    size = visual.image_size
    context = model.text.context_length
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, context), jnp.int32)
    )
    return {k: unstack_layers(nn.meta.unbox(v)) for k, v in shapes.items()}


def leaves(tree: Mapping[str, Any]) -> dict[tuple[str, ...], Any]:
    """{path of dict keys: leaf} of a nested mapping."""
    return {tuple(p.key for p in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def host(x: Any) -> Any:
    """A C-contiguous numpy array; tracers (under jax.eval_shape) pass through."""
    return x if isinstance(x, jax.core.Tracer) else np.asarray(x, order="C")


def _concatenate(parts: list[Any]) -> Any:
    """Concatenates along the first axis, numpy arrays with numpy and tracers with jax.numpy."""
    return (jnp if isinstance(parts[0], jax.core.Tracer) else np).concatenate(parts)


def torch_layout(path: tuple[str, ...], key: str, value: Any) -> Any:
    """A flax leaf in PyTorch's layout under `key`, q/k/v still apart: the inverse of `convert_leaf`.

    conv kernel HWIO -> OIHW; Linear kernel (in, out) -> (out, in), where an
    attention kernel is first flattened to (in, out): [D, H, Dh] -> (D, H*Dh),
    out [H, Dh, D] -> (H*Dh, D); a projection matrix stored as a Linear's
    `weight` (transformers' `visual_projection`) -> (out, in); in-projection
    bias [H, Dh] -> (H*Dh,).
    """
    if path[-1] == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if path[-1] == "kernel":
        split = value.ndim - 1 if path[-2] == "out" else 1
        return value.reshape(int(np.prod(value.shape[:split])), -1).T
    if value.ndim == 2 and key.endswith("weight") and "embedding" not in key:
        return value.T
    if path[-1] == "bias" and value.ndim == 2:
        return value.reshape(-1)
    return value


def check_fits(variables: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raises ConversionError naming every missing, unexpected or mis-shaped variable (unstacked layout)."""
    have = {"/".join(p): tuple(x.shape) for p, x in leaves(variables).items()}
    want = {"/".join(p): tuple(x.shape) for p, x in leaves(expected).items()}
    problems = []
    if missing := sorted(set(want) - set(have)):
        problems.append(f"missing variables: {missing}")
    if unexpected := sorted(set(have) - set(want)):
        problems.append(f"unexpected variables: {unexpected}")
    shared = sorted(set(have) & set(want))
    problems += [f"{p}: shape {have[p]}, model expects {want[p]}" for p in shared if have[p] != want[p]]
    if problems:
        raise ConversionError("variables do not fit the model:\n  " + "\n  ".join(problems))


Naming = Callable[[tuple[str, ...]], tuple[str, Slot | None]]


def variables_from_state_dict(
    state_dict: Mapping[str, Any], model: CLIP, naming: Naming, ignored: re.Pattern[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Flax variables ({'params', and 'batch_stats' for ResNets}) of `model` from a PyTorch state dict.

    Keys matching `ignored` (buffers without parameters) may be there or not. The layer stacks come out
    scanned when the model scans. Raises ConversionError naming every missing, unexpected or mis-shaped key.
    """
    consumed: set[str] = set()
    missing: list[str] = []
    errors: list[str] = []

    def convert(path: tuple[Any, ...], target: jax.ShapeDtypeStruct) -> np.ndarray | None:
        key, slot = naming(tuple(p.key for p in path))
        if key not in state_dict:
            missing.append(key)
            return None
        consumed.add(key)
        try:
            return convert_leaf(key, state_dict[key], slot, target.shape)
        except ConversionError as e:
            errors.append(str(e))
            return None

    variables = {
        collection: jax.tree_util.tree_map_with_path(convert, tree)
        for collection, tree in expected_variables(model).items()
    }
    unexpected = sorted(k for k in state_dict if k not in consumed and not (ignored and ignored.search(k)))
    raise_misfits(missing, unexpected, errors)
    return in_layout_of(variables, model)


def state_dict_from_variables(
    variables: Mapping[str, Any], model: CLIP, naming: Naming, unit_axes: Mapping[str, int],
    dtype: DTypeLike | None = np.float32,
) -> dict[str, Any]:
    """The PyTorch state dict holding `variables` under `naming`: the inverse of `variables_from_state_dict`.

    variables: {'params', maybe 'batch_stats'} of `model` in the plain or the scanned layout, numpy or jax
    arrays of any float dtype, cast to `dtype` (None: as they are). unit_axes: keys whose tensors carry that
    many leading unit axes. Each BatchNorm also gets its `num_batches_tracked` (int64 0). Traceable: under
    jax.eval_shape it gives the shapes without arrays. Raises ConversionError naming every variable that does
    not fit the model.
    """
    variables = {k: unstack_layers(jax.tree.map(host, v)) for k, v in nn.meta.unbox(dict(variables)).items()}
    check_fits(variables, expected_variables(model))
    state_dict: dict[str, Any] = {}
    for (collection, *path), value in leaves(variables).items():
        key, slot = naming(tuple(path))
        value = torch_layout(tuple(path), key, value if dtype is None else value.astype(dtype))
        value = value.reshape((1,) * unit_axes.get(key, 0) + value.shape)
        if slot is None:
            state_dict[key] = value
        else:  # the projections stacked on the first axis, in slot order (q, k, v)
            index, parts = slot
            state_dict.setdefault(key, [None] * parts)[index] = value
        if collection == "batch_stats" and path[-1] == "mean":
            state_dict[f"{key.rsplit('.', 1)[0]}.num_batches_tracked"] = np.zeros((), np.int64)
    return {k: host(_concatenate(v) if isinstance(v, list) else v) for k, v in state_dict.items()}
