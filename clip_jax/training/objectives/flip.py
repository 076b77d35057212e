"""FLIP (Li et al. 2023) in training: which steps mask, and the patch tokens a step keeps.

A ViT image tower sees a random (1 - config.flip.mask_ratio) of its patch
tokens per example in training, except in the last config.flip.unmasked_steps
steps (FLIP's unmasked tuning); evaluation always sees whole images. The
subsets are a pure function of (config.seed, step), so a resumed run draws the
masks the uninterrupted one would have. The kept sequence length is static,
so each mask ratio is its own compiled train step.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections

from clip_jax.models.vit import random_patch_subset

# Folded into the seed's key before the step: the masks are a stream of their own.
MASK_STREAM = 0x464C4950  # "FLIP"


def mask_ratio_at(config: ml_collections.ConfigDict, step: int) -> float:
    """The mask ratio of train step `step` (0-based): config.flip.mask_ratio, 0 in the last unmasked_steps."""
    if step >= config.total_steps - config.flip.unmasked_steps:
        return 0.0
    return float(config.flip.mask_ratio)


def mask_ratios_from(config: ml_collections.ConfigDict, start_step: int) -> tuple[float, ...]:
    """The distinct mask ratios of steps start_step .. total_steps - 1, in the order the run meets them."""
    first = mask_ratio_at(config, start_step)
    return (first, 0.0) if first and config.flip.unmasked_steps else (first,)


def mask_key(seed: int, step: jax.Array) -> jax.Array:
    """The key of step `step`'s masks: a function of (seed, step) only."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), MASK_STREAM), step)


def kept_patches(
    model: nn.Module, seed: int, step: jax.Array, batch_size: int, mask_ratio: float
) -> jax.Array:
    """[B, K] int32: the patch indices each example of step `step`'s global batch keeps (ascending)."""
    return random_patch_subset(mask_key(seed, step), batch_size, model.visual.num_patches, mask_ratio)
