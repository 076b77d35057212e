"""Training objectives: one class per method, found by `config.loss` in OBJECTIVES.

    cls = objective_class(config)                             # OBJECTIVES[config.loss]
    model, overrides = cls.create_model(config)               # or model_from_config(config)
    objective = cls(model, config, mask_ratio)                # or make_objective(model, config, mask_ratio)
    variables = objective.init_variables(rng)                 # towers, scalars and the objective's heads
    extra = objective.init_extra()                            # state beyond parameters (DeCLIP's text queue)
    inputs = objective.prepare(step, batch)                   # global batch -> per-example inputs [B, ...]
    outputs, batch_stats = objective.forward(params, batch_stats, inputs)   # per (micro-)batch, differentiable
    loss, metrics, extra = objective.loss(outputs, scalars, extra, step, axis_name)   # in shard_map

Every class implements `protocol.Objective`: class methods that answer from
the config alone (its checks, its model, its frozen towers, the weights a
fresh run loads) and the step's methods above. A new method is a module here
and one line in OBJECTIVES; config validation, the loop and the step ask the
class.

`prepare` makes the step's random draws (FLIP's kept patches, DeCLIP's masked
tokens) for the whole global batch as functions of (seed, step), so
micro-batches see what the full batch would and a resumed run draws what the
uninterrupted one did. `forward` maps inputs to per-example outputs [B, ...]
(embeddings, per-example loss sums), which is all gradient accumulation needs:
the train step (`clip_jax.training.train_step`) embeds micro-batches,
differentiates `loss` w.r.t. the outputs of the whole batch and pushes that
back through `forward`. `loss` runs inside `jax.shard_map` over the batch axes
on each device's rows, with `extra` laid out by `extra_specs`.

`Clip`, `Siglip` and `ClipLite` (`contrastive`) share FLIP's masking, LiT's
locked towers and the logit scalars; CLIP-Lite's critic heads live in the
model. `Declip` adds DeCLIP's two views, masked language modelling, SimSiam
and nearest-neighbour queue. `CausalLm` trains a caption LM alone and
`Limber` a linear map from a frozen image tower into a frozen LM's input
space, both with next-token loss on the captions (their models:
`clip_jax.models.limber`).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import ml_collections

from clip_jax.training.objectives.causal_lm import CausalLm
from clip_jax.training.objectives.contrastive import Clip, ClipLite, Contrastive, Siglip
from clip_jax.training.objectives.declip import Declip
from clip_jax.training.objectives.limber import Limber
from clip_jax.training.objectives.protocol import InitialWeights, Objective

OBJECTIVES: dict[str, type[Objective]] = {
    "clip": Clip,  # CLIP's InfoNCE
    "siglip": Siglip,  # pairwise sigmoid
    "clip_lite": ClipLite,  # one negative per pair
    "declip": Declip,  # InfoNCE plus DeCLIP's self-, multi-view and nearest-neighbour supervision
    "causal_lm": CausalLm,  # a caption language model alone
    "limber": Limber,  # a linear map from a frozen image tower into a frozen caption LM
}

__all__ = [
    "OBJECTIVES", "CausalLm", "Clip", "ClipLite", "Contrastive", "Declip", "InitialWeights", "Limber", "Objective",
    "Siglip", "make_objective", "model_from_config", "model_metadata", "objective_class",
]


def objective_class(config: ml_collections.ConfigDict) -> type[Objective]:
    """The class of config.loss; ValueError naming the field for an unknown one."""
    if config.loss not in OBJECTIVES:
        raise ValueError(f"config.loss: {config.loss!r} is not one of {tuple(OBJECTIVES)}")
    return OBJECTIVES[config.loss]


def make_objective(model: nn.Module, config: ml_collections.ConfigDict, mask_ratio: float = 0.0) -> Objective:
    """The objective config.loss trains (FLIP's `mask_ratio` for this step's compiled program)."""
    return objective_class(config)(model, config, mask_ratio)


def model_from_config(config: ml_collections.ConfigDict) -> tuple[nn.Module, dict[str, Any]]:
    """(model, the overrides that define it with its name): a CLIP for the contrastive losses (create_model's
    overrides), `models.limber.CaptionLM` for causal_lm (create_lm's), `models.limber.Limber` for limber
    (create_limber's)."""
    return objective_class(config).create_model(config)


def model_metadata(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> dict[str, Any]:
    """{"kind", "model", "overrides"}: what `clip_jax.weights.storage.model_from_metadata` rebuilds the module from."""
    cls = objective_class(config)
    return {"kind": cls.model_kind, "model": cls.model_name(config), "overrides": overrides}
