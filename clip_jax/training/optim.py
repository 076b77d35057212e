"""The optimizer: optax AdamW with linear warmup + cosine decay and OpenAI's decay mask."""
from __future__ import annotations

from typing import Any, Collection, Mapping

import jax
import ml_collections
import optax

# Only matrices and convolution kernels are decayed: never gains, biases,
# embeddings (token, positional, class) or the logit scale and bias.
DECAYED_NAMES = frozenset({"kernel", "proj", "text_projection"})


def weight_decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay, by their leaf name."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED_NAMES, params)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then cosine to end_learning_rate at total_steps."""
    opt = config.optimizer
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=config.total_steps,
        end_value=opt.end_learning_rate,
    )


def tower_labels(params: Any, locked: Collection[str]) -> Any:
    """'locked' for every leaf under a locked top-level subtree ('visual', 'text'), else 'trained'.

    optax.tree_map_params inits the optimizer on a placeholder that is no mapping: one 'trained' leaf.
    """
    if not isinstance(params, Mapping):
        return "trained"

    def label(name: str, tree: Any) -> Any:
        tag = "locked" if name in locked else "trained"
        return jax.tree.map(lambda _: tag, tree)

    return {name: label(name, tree) for name, tree in params.items()}


def make_optimizer(config: ml_collections.ConfigDict, locked: Collection[str] = ()) -> optax.GradientTransformation:
    """Global-norm clipping (when grad_clip_norm > 0), then AdamW, for every top-level subtree not `locked`.

    Locked towers (the objective's `locked_towers`: LiT's, LiMBeR's) get a zero update and no optimizer
    state: their leaves are `optax.MaskedNode`s in the AdamW moments.
    """
    if not locked:
        return _clipped_adamw(config)
    return optax.multi_transform(
        {"trained": _clipped_adamw(config), "locked": optax.set_to_zero()}, lambda params: tower_labels(params, locked)
    )


def _clipped_adamw(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping (when grad_clip_norm > 0), then AdamW."""
    opt = config.optimizer
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(config),
        b1=opt.b1,
        b2=opt.b2,
        eps=opt.eps,
        weight_decay=opt.weight_decay,
        mask=weight_decay_mask,
    )
    if opt.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw)
    return adamw
