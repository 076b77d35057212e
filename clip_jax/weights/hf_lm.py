"""Hugging Face GPT-2 / GPT-J PyTorch state dicts to clip_jax.lm variables.

`from_hf_state_dict(state_dict, model)` walks the parameters the model
expects, finds each one's tensor by its transformers name, converts its
layout and checks its shape, and reports every missing, unexpected and
mis-shaped key by name (like `clip_jax.weights.open_clip.from_torch_state_dict`).

GPT-2 (`GPT2LMHeadModel`): `h.N.attn.c_attn` is a Conv1D, weight (in, out)
with q, k, v stacked on the output axis; `c_proj`, `mlp.c_fc`, `mlp.c_proj`
are Conv1D (in, out) too; `wte`, `wpe`, `ln_1`, `ln_2`, `ln_f`; the head is
tied to `wte` (a `lm_head.weight` entry equal to `wte.weight` is accepted).
GPT-J (`GPTJForCausalLM`): `h.N.attn.{q,k,v,out}_proj` and `mlp.fc_in/fc_out`
are nn.Linear (out, in); `ln_1`, `ln_f`, `lm_head.weight/bias`. Keys may carry
the `transformer.` prefix or not; the causal-mask buffers `attn.bias` /
`attn.masked_bias` (older checkpoints) are ignored. The naming (GPT-2 or
GPT-J) is read from the state dict, so a checkpoint of the wrong family
fails with the keys it lacks.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.lm.model import CausalLM
from clip_jax.weights.torch_layout import ConversionError, raise_misfits

_PREFIX = "transformer."
_IGNORED_KEYS = re.compile(r"(^|\.)attn\.(bias|masked_bias)$|(^|\.)embed_positions$")
_QKV_INDEX = {"query": 0, "key": 1, "value": 2}
Transform = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


def hf_naming(keys: Any) -> str:
    """'gpt2' or 'gptj' from the state dict's attention keys."""
    keys = list(keys)
    if any(re.search(r"(^|\.)h\.\d+\.attn\.c_attn\.weight$", k) for k in keys):
        return "gpt2"
    if any(re.search(r"(^|\.)h\.\d+\.attn\.q_proj\.weight$", k) for k in keys):
        return "gptj"
    raise ConversionError(
        "not a GPT-2 or GPT-J state dict: no 'h.N.attn.c_attn.weight' or 'h.N.attn.q_proj.weight' key; "
        f"first keys: {sorted(keys)[:8]}"
    )


def _reshape(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return value.reshape(shape)


def _linear(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """nn.Linear (out, in) -> (in, out), then heads split as the kernel needs."""
    return value.T.reshape(shape)


def _stacked(index: int, axis: int) -> Transform:
    """GPT-2's c_attn: q, k, v stacked on the output axis (1 for the weight, 0 for the bias)."""

    def take(value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        if value.shape[axis] % 3:
            raise ValueError(f"shape {value.shape} is not q, k, v stacked on axis {axis}")
        return np.split(value, 3, axis=axis)[index].reshape(shape)

    return take


def _hf_name(path: tuple[str, ...], naming: str) -> tuple[str, Transform]:
    """The (prefix-less) transformers key holding a flax leaf and how to convert it."""
    *scope, leaf = path
    torch_leaf = "weight" if leaf in ("kernel", "scale", "embedding") else leaf
    if scope == ["lm_head"]:
        return f"lm_head.{torch_leaf}", _linear if leaf == "kernel" else _reshape
    if len(scope) == 1:  # wte, wpe, ln_f
        return f"{scope[0]}.{torch_leaf}", _reshape
    block = "h." + scope[0].split("_", 1)[1]
    part = ".".join(scope[1:])
    if scope[1] == "attn" and naming == "gpt2":
        if scope[2] in _QKV_INDEX:
            axis = 1 if leaf == "kernel" else 0
            return f"{block}.attn.c_attn.{torch_leaf}", _stacked(_QKV_INDEX[scope[2]], axis)
        return f"{block}.attn.c_proj.{torch_leaf}", _reshape
    if scope[1] == "attn":
        name = "out" if scope[2] == "out" else scope[2][0]
        return f"{block}.attn.{name}_proj.{torch_leaf}", _linear if leaf == "kernel" else _reshape
    if scope[1] == "mlp" and naming == "gpt2":
        return f"{block}.mlp.{'c_fc' if scope[2] == 'fc_in' else 'c_proj'}.{torch_leaf}", _reshape
    if scope[1] == "mlp":
        return f"{block}.{part}.{torch_leaf}", _linear if leaf == "kernel" else _reshape
    return f"{block}.{part}.{torch_leaf}", _reshape  # ln_1, ln_2


def expected_params(model: CausalLM) -> Any:
    """Shapes of the model's params (unboxed ShapeDtypeStructs); no memory used."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    return nn.meta.unbox(shapes["params"])


def from_hf_state_dict(state_dict: Mapping[str, Any], model: CausalLM) -> dict[str, Any]:
    """{'params': ...} for `model` from a transformers GPT-2 / GPT-J state dict (names -> numpy arrays).

    Raises ConversionError naming every missing, unexpected or mis-shaped key
    (in the checkpoint's own spelling, with or without `transformer.`).
    """
    naming = hf_naming(state_dict)
    has_prefix = any(k.startswith(_PREFIX) for k in state_dict)
    original = {(k[len(_PREFIX) :] if k.startswith(_PREFIX) else k): k for k in state_dict}

    def spelled(key: str) -> str:  # a prefix-less key as this checkpoint would spell it
        return original.get(key, key if key.startswith("lm_head.") or not has_prefix else _PREFIX + key)

    consumed: set[str] = set()
    missing: list[str] = []
    errors: list[str] = []

    def convert(path: tuple[Any, ...], target: jax.ShapeDtypeStruct) -> np.ndarray | None:
        key, transform = _hf_name(tuple(p.key for p in path), naming)
        if key not in original:
            missing.append(spelled(key))
            return None
        consumed.add(key)
        value = np.asarray(state_dict[original[key]], dtype=np.float32)
        try:
            converted = transform(value, tuple(target.shape))
        except ValueError as e:
            errors.append(f"{original[key]}: shape {value.shape} does not convert to {tuple(target.shape)} ({e})")
            return None
        if converted.shape != tuple(target.shape):
            errors.append(f"{original[key]}: shape {value.shape}, model expects {tuple(target.shape)}")
            return None
        return converted

    params = jax.tree_util.tree_map_with_path(convert, expected_params(model))
    if model.config.tie_embeddings and "lm_head.weight" in original and "wte.weight" in original:
        consumed.add("lm_head.weight")
        head, wte = state_dict[original["lm_head.weight"]], state_dict[original["wte.weight"]]
        if np.shape(head) != np.shape(wte) or not np.array_equal(head, wte):
            errors.append(
                f"{original['lm_head.weight']} differs from {original['wte.weight']}: the checkpoint's head "
                "is not tied; use tie_embeddings=False"
            )
    unexpected = sorted(original[k] for k in original if k not in consumed and not _IGNORED_KEYS.search(k))
    raise_misfits(missing, unexpected, errors, f"{naming} state dict")
    return {"params": params}
