"""clip_jax: CLIP-style image-text models, losses, tokenizers and training in JAX/Flax.

The names below load on first use (`clip_jax.models`, `from clip_jax import load`), so importing the
package costs nothing until then: the command-line programs restart themselves
(`clip_jax.runtime.host_memory`) before JAX is imported. `clip_jax.data` (the tf.data input pipeline) imports
TensorFlow and is left to an explicit `from clip_jax import data`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clip_jax import evaluation, losses, models, tokenizers, weights
    from clip_jax.inference.captioner import Captioner, load_captioner
    from clip_jax.inference.pretrained import Pretrained, load
    from clip_jax.models import create_model, list_models

_SUBMODULES = ("evaluation", "losses", "models", "tokenizers", "weights")
_DEFINED_IN = {
    "Captioner": "inference.captioner", "load_captioner": "inference.captioner", "Pretrained": "inference.pretrained",
    "load": "inference.pretrained", "create_model": "models", "list_models": "models",
}

__all__ = sorted([*_SUBMODULES, *_DEFINED_IN])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"clip_jax.{name}")
    if name in _DEFINED_IN:
        return getattr(importlib.import_module(f"clip_jax.{_DEFINED_IN[name]}"), name)
    raise AttributeError(f"module 'clip_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
