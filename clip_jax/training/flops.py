"""Model FLOPs of a train step: MFU's numerator, from XLA's cost analysis of the plain program."""
from __future__ import annotations

import flax.linen as nn
import jax
import ml_collections
from jax.sharding import Mesh

from clip_jax.training import optim
from clip_jax.training.objectives import make_objective
from clip_jax.training.train_state import init_state_fn
from clip_jax.training.train_step import Batch, make_train_step


def _unrolled(tower: nn.Module) -> nn.Module:
    """The tower without scan or remat (ResNet towers have neither)."""
    fields = {name: value for name, value in (("scan_layers", False), ("remat_policy", "none")) if hasattr(tower, name)}
    return tower.clone(**fields)


def model_flops_per_step(
    model: nn.Module, config: ml_collections.ConfigDict, mesh: Mesh, batch: Batch, mask_ratio: float = 0.0
) -> float | None:
    """Model FLOPs of one train step of the global batch, from XLA's cost analysis.

    Counted on the plain program (layers unrolled, no remat, no micro-batches):
    XLA counts a loop body once, and model FLOPs by definition leave out
    recomputation. With FLIP's `mask_ratio` the image tower runs on the kept
    tokens only. Only traced and lowered, never compiled.
    """
    plain = model.clone(**{name: _unrolled(getattr(model, name)) for name in ("visual", "text") if hasattr(model, name)})
    plain_config = ml_collections.ConfigDict(config.to_dict())
    plain_config.num_microbatches = 1
    objective = make_objective(plain, plain_config, mask_ratio)
    optimizer = optim.make_optimizer(plain_config, objective.locked)
    init = init_state_fn(objective, optimizer)
    state = jax.eval_shape(init, jax.random.key(0))
    step = make_train_step(objective, mesh, optimizer, optim.learning_rate_schedule(plain_config))
    analysis = jax.jit(step).lower(state, batch).cost_analysis()
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None
