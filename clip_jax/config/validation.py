"""Checks a config passes before anything is compiled; each error names the bad field.

    validate(config)                              # touches no device
    validate_batch_layout(config, batch_shards)   # the checks that need the mesh

The fields every method reads are checked here; the method's own fields
(config.clip_lite, config.declip, config.lm, config.limber, the logit
scalars) by its objective's `validate` (`clip_jax.training.objectives`).
"""
from __future__ import annotations

import dataclasses

import ml_collections

from clip_jax.config.errors import check
from clip_jax.evaluation import find_benchmark, list_benchmarks
from clip_jax.models import MODEL_SPECS, list_models
from clip_jax.models.layers import REMAT_POLICIES
from clip_jax.training.objectives import OBJECTIVES, objective_class

LOSS_IMPLS = ("all_gather", "blockwise")
DTYPES = ("float32", "bfloat16")
MESH_AXES = ("data", "fsdp", "tensor")


def _validate_lit(config: ml_collections.ConfigDict) -> None:
    """A locked tower starts from weights; at least one tower trains."""
    lit = config.lit
    check(
        not (lit.lock_image and lit.lock_text), "lit.lock_text", "both towers locked: only the logit scale would train"
    )
    check(
        not lit.lock_image or bool(config.init_from or lit.init_image_from),
        "lit.lock_image",
        "locks a randomly initialised image tower; set config.lit.init_image_from (or config.init_from)",
    )
    check(
        not lit.lock_text or bool(config.init_from),
        "lit.lock_text",
        "locks a randomly initialised text tower; set config.init_from",
    )


def _validate_flip(config: ml_collections.ConfigDict) -> None:
    """flip.mask_ratio in [0, 1), keeping a patch, for ViT towers only; flip.unmasked_steps in [0, total_steps]."""
    ratio = config.flip.mask_ratio
    check(0 <= ratio < 1, "flip.mask_ratio", f"must be in [0, 1), got {ratio}")
    check(0 <= config.flip.unmasked_steps <= config.total_steps, "flip.unmasked_steps", "must be in [0, total_steps]")
    if ratio == 0:
        return
    vision = {**dataclasses.asdict(MODEL_SPECS[config.model].vision), **(config.model_overrides.get("vision") or {})}
    check(
        vision["patch_size"] is not None,
        "flip.mask_ratio",
        f"masks ViT patch tokens, but {config.model} has a ResNet image tower; set it to 0",
    )
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    check(round((1 - ratio) * patches) >= 1, "flip.mask_ratio", f"{ratio} keeps none of the {patches} patches")


def _validate_evals(config: ml_collections.ConfigDict, eval_types: tuple[str, ...]) -> None:
    """Each eval: a type the method's model runs, data, a positive period, the fields its type needs."""
    for name, spec in config.evals.items():
        check(
            spec.get("type") in eval_types, f"evals.{name}.type",
            f"{spec.get('type')!r} is not one of {eval_types}, the evals of loss {config.loss!r}",
        )
        check(bool(spec.get("data")), f"evals.{name}.data", "needs a data source string")
        check(spec.get("every_steps", 0) > 0, f"evals.{name}.every_steps", "must be positive")
        if spec.type == "zeroshot":  # templates: the data set's shipped ones, else OpenAI's 80 ImageNet prompts
            check(
                bool(spec.get("classnames")) or find_benchmark(spec.data) is not None,
                f"evals.{name}.classnames",
                f"zero-shot needs class names: {spec.data!r} has no shipped ones (TFDS sets that have: "
                f"{', '.join(list_benchmarks())}); set classnames",
            )
        check(isinstance(spec.get("optional", False), bool), f"evals.{name}.optional", "must be True or False")
        if spec.type == "linear_probe":
            check(bool(spec.get("train_data")), f"evals.{name}.train_data", "a linear probe needs a train_data source")
        if "val_data" in spec:
            check(spec.type == "linear_probe", f"evals.{name}.val_data", "only a linear probe takes a val_data source")
            check(bool(spec.val_data), f"evals.{name}.val_data", "needs a data source string (or leave it out)")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError (a ValueError) naming the first bad field; touches no device."""
    check(config.model in list_models(), "model", f"unknown model {config.model!r}; one of {list_models()}")
    check(config.dtype in DTYPES, "dtype", f"{config.dtype!r} is not one of {DTYPES}")
    check(config.remat_policy in REMAT_POLICIES, "remat_policy", f"{config.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
    check(config.loss in OBJECTIVES, "loss", f"{config.loss!r} is not one of {tuple(OBJECTIVES)}")
    objective = objective_class(config)
    check(config.loss_impl in LOSS_IMPLS, "loss_impl", f"{config.loss_impl!r} is not one of {LOSS_IMPLS}")
    check(config.loss_block_size > 0, "loss_block_size", "must be positive")
    check(config.max_logit_scale > 0, "max_logit_scale", "must be positive")
    check(config.max_nonfinite_steps >= 1, "max_nonfinite_steps", "must be at least 1")
    check(config.batch_size > 0, "batch_size", "must be positive")
    check(config.num_microbatches >= 1, "num_microbatches", "must be at least 1")
    check(
        config.batch_size % config.num_microbatches == 0,
        "num_microbatches",
        f"{config.num_microbatches} does not divide batch_size {config.batch_size}",
    )
    check(config.total_steps > 0, "total_steps", "must be positive")
    _validate_flip(config)
    opt = config.optimizer
    check(opt.learning_rate > 0, "optimizer.learning_rate", "must be positive")
    check(0 <= opt.warmup_steps <= config.total_steps, "optimizer.warmup_steps", "must be in [0, total_steps]")
    check(0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, "optimizer.b1", "betas must be in [0, 1)")
    check(opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    check(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0 disables clipping)")
    for axis in MESH_AXES:
        size = config.mesh[axis]
        check(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 (the rest) or >= 1, got {size}")
    check(sum(config.mesh[a] == -1 for a in MESH_AXES) <= 1, "mesh", "at most one axis may be -1")
    check(config.data.context_length > 0, "data.context_length", "must be positive")
    check(config.data.num_streams >= 0, "data.num_streams", "must be >= 0 (0: one per process)")
    check(
        not config.data.chain_captions or objective.chains_captions, "data.chain_captions",
        "chains the captions a caption LM trains on (loss causal_lm)",
    )
    _validate_lit(config)
    objective.validate(config)
    check(config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be positive")
    check(config.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
    check(config.log_every_steps > 0, "log_every_steps", "must be positive")
    _validate_evals(config, objective.eval_types)


def validate_batch_layout(config: ml_collections.ConfigDict, batch_shards: int) -> None:
    """The checks that need the number of devices the batch is split over (mesh data x fsdp)."""
    check(
        (config.batch_size // config.num_microbatches) % batch_shards == 0,
        "batch_size",
        f"{config.batch_size} in {config.num_microbatches} micro-batch(es) does not split over "
        f"{batch_shards} batch shards",
    )
    objective_class(config).validate_batch_layout(config, batch_shards)
