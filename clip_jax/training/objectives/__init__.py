"""Training objectives: the one place a method adds heads, losses and state to the train step.

    objective = make_objective(model, config, mask_ratio)
    variables = objective.init_variables(rng)                 # towers, scalars and the objective's heads
    extra = objective.init_extra()                            # state beyond parameters (DeCLIP's text queue)
    inputs = objective.prepare(step, batch)                   # global batch -> per-example inputs [B, ...]
    outputs, batch_stats = objective.forward(params, batch_stats, inputs)   # per (micro-)batch, differentiable
    loss, metrics, extra = objective.loss(outputs, scalars, extra, step, axis_name)   # in shard_map

`prepare` makes the step's random draws (FLIP's kept patches, DeCLIP's masked
tokens) for the whole global batch as functions of (seed, step), so
micro-batches see what the full batch would and a resumed run draws what the
uninterrupted one did. `forward` maps inputs to per-example outputs [B, ...]
(embeddings, per-example loss sums), which is all gradient accumulation needs:
the train step (`clip_jax.training.train_step`) embeds micro-batches, differentiates
`loss` w.r.t. the outputs of the whole batch and pushes that back through
`forward`. `loss` runs inside `jax.shard_map` over the batch axes on each
device's rows, with `extra` laid out by `extra_specs`.

`Contrastive` serves clip, siglip and clip_lite (with FLIP's masking, LiT's
locked towers and CLIP-Lite's critic heads, which live in the model);
`Declip` adds DeCLIP's two views, masked language modelling, SimSiam and
nearest-neighbour queue. `CausalLm` ("causal_lm") trains a caption LM alone and
`Limber` ("limber") a linear map from a frozen image tower into a frozen LM's
input space, both with next-token loss on the captions (their models:
`clip_jax.models.limber`). An objective may also name `locked` top-level
parameter subtrees; `config.locked_towers` is where the optimizer and the step learn them.
"""
from __future__ import annotations

import flax.linen as nn
import ml_collections

from clip_jax.training.objectives.causal_lm import CausalLm
from clip_jax.training.objectives.contrastive import Contrastive, loss_function
from clip_jax.training.objectives.declip import Declip
from clip_jax.training.objectives.limber import Limber

__all__ = ["CausalLm", "Contrastive", "Declip", "Limber", "loss_function", "make_objective"]


def make_objective(model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0) -> Contrastive:
    """The objective config.loss trains (FLIP's `mask_ratio` for this step's compiled program)."""
    if config.loss == "declip":
        return Declip(model, config, mask_ratio)
    if config.loss == "causal_lm":
        return CausalLm(model, config, mask_ratio)
    if config.loss == "limber":
        return Limber(model, config, mask_ratio)
    return Contrastive(model, config, mask_ratio)
