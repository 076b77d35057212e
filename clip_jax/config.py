"""The training config: defaults every recipe starts from, and validation.

Recipes in configs/ call `default_config()` and change what differs; every
field can be overridden on the command line (`--config.batch_size=64`).
`validate(config)` runs before anything is compiled and names the bad field;
`validate_batch_layout(config, batch_shards)` adds the checks that need the mesh.
"""
from __future__ import annotations

import dataclasses
import math

import ml_collections
from ml_collections import config_dict

from clip_jax.evaluation import EVAL_TYPES, find_benchmark, list_benchmarks
from clip_jax.lm.model import LMConfig
from clip_jax.lm.registry import list_lms
from clip_jax.models import CLIP, list_models
from clip_jax.models.layers import REMAT_POLICIES
from clip_jax.models.registry import MODEL_SPECS

LOSSES = ("clip", "siglip", "clip_lite", "declip", "causal_lm", "limber")
CAPTIONING_EVAL = "captioning"  # LiMBeR's eval: greedy captions scored by evaluation.caption_eval
LM_LOSSES = ("causal_lm", "limber")  # next-token losses on captions (clip_jax.training.objectives.causal_lm, .limber)
LIMBER_PREFIXES = ("grid", "pooled")
# A caption LM's prompt is its tokenizer's start token: CLIP BPE's SOT, or GPT-2's <|endoftext|> ("gpt2:DIR").
LM_TOKENIZERS = ("clip", "gpt2:DIR")
LOSS_IMPLS = ("all_gather", "blockwise")
CLIP_LITE_NEGATIVES = ("shifted", "hardest")
DTYPES = ("float32", "bfloat16")
# Each loss's initial (logit scale, logit bias) where config.init_logit_* is None. The scale is
# the log of the multiplier, as create_model's init_logit_scale; a bias of None: the model has no
# logit_bias parameter.
LOSS_LOGIT_INIT: dict[str, tuple[float, float | None]] = {
    "clip": (CLIP.init_logit_scale, None),  # log(1/0.07), OpenAI's
    "clip_lite": (CLIP.init_logit_scale, None),
    "declip": (CLIP.init_logit_scale, None),
    "siglip": (math.log(10.0), -10.0),  # SigLIP (Zhai et al. 2023): multiplier 10, bias -10
}


def default_config() -> ml_collections.ConfigDict:
    """OpenAI's CLIP recipe for ViT-B/32 (AdamW, lr 5e-4, batch 32,768, warmup + cosine)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = "ViT-B-32"
    c.dtype = "bfloat16"  # compute dtype; parameters and optimizer state stay float32
    c.remat_policy = "none"
    # True: one `nn.scan` over each tower's transformer blocks. It compiles one block instead of every
    # layer and keeps XLA from fusing the backward's residual-gradient sums across layers, which on CPU
    # recomputes them in every layer (benchmarks/open_clip_side_by_side.py); the full-size recipes set it.
    c.scan_layers = False
    # Extra create_model overrides, e.g. {'text': {'vocab_size': 32000}}.
    c.model_overrides = ml_collections.ConfigDict()

    # "clip" (InfoNCE), "siglip" (pairwise sigmoid), "clip_lite" (one negative per pair), "declip"
    # (InfoNCE plus DeCLIP's self-, multi-view and nearest-neighbour supervision, config.declip),
    # "causal_lm" (a caption language model alone, config.lm) or "limber" (LiMBeR: a linear map from a
    # frozen image tower into a frozen caption LM, config.limber)
    c.loss = "clip"
    # How clip and siglip form the [N, N] logits of the global batch: "all_gather" ([n, N] per
    # device) or "blockwise" (a ring of [n, loss_block_size] tiles; memory flat in N). clip_lite
    # compares each pair with one caption of the neighbouring device: O(n d) under either value,
    # which run the same code and give the same numbers.
    c.loss_impl = "all_gather"
    # Texts per logit tile of the blockwise losses and of the in-batch metrics; for "blockwise" it
    # must divide the per-device batch, batch_size / (mesh data x fsdp), or be at least it.
    c.loss_block_size = 1024
    c.max_logit_scale = 100.0  # the multiplier exp(logit_scale) is clipped to this after each step
    # Initial logit scale as the log of the multiplier (e.g. math.log(10)); None: the loss's default
    # (log(1/0.07) for clip and clip_lite, log(10) for siglip).
    c.init_logit_scale = config_dict.placeholder(float)
    # Initial logit bias, siglip only; None: -10. clip and clip_lite have no bias.
    c.init_logit_bias = config_dict.placeholder(float)
    # CLIP-Lite (Shrivastava et al. 2021), used with loss="clip_lite": critic heads of width critic_dim
    # on both towers (clip_jax.models.critic; 0: the loss on the towers' own embeddings), and each
    # image's one negative caption: "shifted" (the next caption of the global batch, the paper's) or
    # "hardest" (the caption of the global batch, other than its own, it scores highest).
    c.clip_lite = ml_collections.ConfigDict(dict(critic_dim=2048, negatives="shifted"))
    # DeCLIP (Li et al. 2021), used with loss="declip" (clip_jax.training.objectives.declip): the weight of each
    # supervision (DeCLIP's code: 0.6 on the four image-view x caption InfoNCE terms, 0.2 each on SimSiam,
    # masked language modelling and nearest neighbours), SimSiam's projection width, the FIFO queue of
    # caption embeddings (a multiple of batch_size), and masked language modelling: the share of caption
    # tokens masked (80% [MASK], 10% random, 10% kept) and at most mlm_max_predictions of them per caption.
    c.declip = ml_collections.ConfigDict(dict(
        weights=dict(multi_view=0.6, image_ssl=0.2, text_ssl=0.2, nearest_neighbour=0.2),
        projection_dim=1024,
        queue_size=65536,
        mlm_rate=0.15,
        mlm_max_predictions=16,
    ))

    # The causal language model (clip_jax.lm) of loss="causal_lm" (trained from scratch on the captions) and
    # of loss="limber" (frozen; the architecture of the run limber.lm_from names). name: a clip_jax.lm name
    # (clip_jax.lm.list_lms(): "gpt2", "gpt-j-6b", "gpt2-tiny", ...); overrides: LMConfig fields on top,
    # e.g. {'width': 128, 'layers': 2, 'max_positions': 64}. vocab_size defaults to the tokenizer's
    # (data.tokenizer; set, it must be at least that); dtype and remat_policy come from config.dtype and
    # config.remat_policy. Learned positions ("gpt2" layouts) must cover every position the LM reads:
    # data.context_length - 1 caption tokens, after limber's k prefix vectors. Rotary positions (GPT-J
    # layouts, as the paper's LM) are relative: a caption LM trained on captions alone then meets its
    # captions shifted by k positions at no cost, which learned positions cannot offer.
    c.lm = ml_collections.ConfigDict(dict(name="gpt2-tiny", overrides=ml_collections.ConfigDict()))
    # LiMBeR (Merullo et al. 2023), used with loss="limber" (clip_jax.training.objectives.limber): only a linear map
    # from image features to k soft-prompt vectors in the LM's input space trains; the image tower
    # (config.model, with config.model_overrides' `vision` fields) and the LM (config.lm) are frozen.
    # image_from: the CLIP weights (clip_jax.import_weights directory) or CLIP run workdir whose 'visual'
    #   tower is loaded; lm_from: the caption LM's run workdir (loss="causal_lm") or an imported LM's
    #   weights directory (clip_jax.lm.import_weights); both required, both must fit config.model / config.lm.
    # prefix: "grid" (the tower's spatial features [n, C] -> n vectors by one Dense: a ResNet's map before
    #   attention pooling, a ViT's patch tokens after ln_post) or "pooled" (the tower's embedding [E] ->
    #   num_prompts vectors by one Dense of num_prompts x width outputs).
    # num_prompts: k of the pooled prefix (>= 1); for grid 0 (k is the grid's n) or n itself.
    c.limber = ml_collections.ConfigDict(dict(image_from="", lm_from="", prefix="grid", num_prompts=0))

    c.batch_size = 32768  # global, over all devices and hosts
    c.num_microbatches = 1  # > 1: gradient accumulation keeping every negative of the batch
    c.total_steps = 100_000
    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=5e-4,
            warmup_steps=2000,
            end_learning_rate=0.0,
            b1=0.9,
            b2=0.98,
            eps=1e-6,
            weight_decay=0.2,
            grad_clip_norm=0.0,  # 0: no clipping
        )
    )
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # FLIP (Li et al. 2023): in training a ViT image tower keeps a random (1 - mask_ratio) of its patch
    # tokens per example (a function of seed and step); 0: off. The last unmasked_steps steps train
    # on whole images (FLIP's unmasked tuning). Evaluation always sees whole images.
    c.flip = ml_collections.ConfigDict(dict(mask_ratio=0.0, unmasked_steps=0))

    # Not type-safe: `train` takes a source string or, in a config file, a mixture
    # [(source, weight), ...] (data.Pipeline); the other fields are checked by validate().
    c.data = ml_collections.ConfigDict(
        dict(
            train="shapes",
            tokenizer="clip",
            context_length=77,
            min_crop_scale=0.9,
            shuffle_buffer=10_000,
            # False: epoch after epoch, each a new permutation of the shards;
            # True: shards (or records) drawn with replacement, an endless resampled stream.
            resample=False,
            # Disjoint streams the records are split into; each process reads an equal block of them
            # and every batch takes batch_size / num_streams rows from each. The global batch is the
            # same for every process count dividing num_streams, so a run resumes on another number
            # of processes. 0: one stream per process of the run that started it.
            num_streams=0,
            # loss "causal_lm": train on all of an example's captions in one row (start, first caption,
            # start, next caption, ..., end), so the LM learns to name what earlier context named: the
            # reading LiMBeR's frozen LM needs to take an image prefix in that context's place.
            chain_captions=False,
        ),
        type_safe=False,
    )

    c.init_from = ""  # converted weights (clip_jax.import_weights) or another run's workdir
    # LiT (Zhai et al. 2022): a locked tower gets no gradient, no optimizer state and no update, and
    # a locked ResNet image tower keeps its BatchNorm statistics (it runs in inference mode).
    # init_image_from loads only the image tower ('visual') from converted weights or a run's workdir,
    # after init_from: LiT's "Lu" (text tower from scratch); init_from alone with lock_image is "LU".
    c.lit = ml_collections.ConfigDict(dict(lock_image=False, lock_text=False, init_image_from=""))
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.log_every_steps = 50
    c.progress_every_seconds = 60.0
    # name -> eval spec (clip_jax.evaluation.in_loop): type ('zeroshot', 'retrieval', 'linear_probe'),
    # data (a source string), every_steps, optional batch_size; zeroshot: classnames, templates;
    # retrieval: num_captions; linear_probe: train_data (the source it is fitted on) and optional
    # val_data (the source its L2 strength is chosen on; without it, a seeded 20% of train_data).
    # Zero-shot on a TFDS set with shipped metadata (clip_jax.evaluation.list_benchmarks(), e.g.
    # data="tfds:imagenet2012:validation") needs no classnames/templates; given ones win. optional=True
    # (default False): if the data is missing (TFDS dataset not prepared) the eval is skipped with one
    # warning instead of failing the run. LiMBeR (loss "limber") has type 'captioning' alone: greedy
    # captions of the data's images scored against their captions (BLEU-1..4, CIDEr-D; num_captions
    # references per image), and with classnames (and a labelled source) "named", the share of captions
    # naming their image's class and no other.
    c.evals = ml_collections.ConfigDict()
    return c


def imagenet_zeroshot_eval(every_steps: int = 10_000) -> ml_collections.ConfigDict:
    """The full-size recipes' in-loop ImageNet zero-shot eval (OpenAI's class names and 80 prompts, top-1/top-5
    on the 50,000 validation images), skipped with one warning where imagenet2012 is not prepared in the TFDS
    data dir (its archives go into <data_dir>/downloads/manual/, then `tfds build imagenet2012`)."""
    return ml_collections.ConfigDict(
        dict(type="zeroshot", data="tfds:imagenet2012:validation", optional=True, every_steps=every_steps)
    )


class ConfigError(ValueError):
    """A config field that cannot work; the message starts with `config.<field>:`."""


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def locked_towers(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The top-level parameter subtrees that config.lit locks: 'visual' and/or 'text' (LiMBeR: both, always)."""
    if config.loss == "limber":
        return ("visual", "text")
    return tuple(name for name, lock in (("visual", config.lit.lock_image), ("text", config.lit.lock_text)) if lock)


def _validate_lit(config: ml_collections.ConfigDict) -> None:
    """A locked tower starts from weights; at least one tower trains."""
    lit = config.lit
    _check(
        not (lit.lock_image and lit.lock_text), "lit.lock_text", "both towers locked: only the logit scale would train"
    )
    _check(
        not lit.lock_image or bool(config.init_from or lit.init_image_from),
        "lit.lock_image",
        "locks a randomly initialised image tower; set config.lit.init_image_from (or config.init_from)",
    )
    _check(
        not lit.lock_text or bool(config.init_from),
        "lit.lock_text",
        "locks a randomly initialised text tower; set config.init_from",
    )


def initial_logit_scale(config: ml_collections.ConfigDict) -> float:
    """The logit scale (log of the multiplier) the model starts from."""
    return config.init_logit_scale if config.init_logit_scale is not None else LOSS_LOGIT_INIT[config.loss][0]


def initial_logit_bias(config: ml_collections.ConfigDict) -> float | None:
    """The logit bias the model starts from; None: the model has no logit_bias parameter."""
    return config.init_logit_bias if config.init_logit_bias is not None else LOSS_LOGIT_INIT[config.loss][1]


def _validate_logit_init(config: ml_collections.ConfigDict) -> None:
    """init_logit_scale / init_logit_bias: set only here, finite, within max_logit_scale, a bias only where used."""
    for field in ("init_logit_scale", "init_logit_bias"):
        _check(field not in config.model_overrides, f"model_overrides.{field}", f"set config.{field} instead")
        value = config[field]
        _check(value is None or math.isfinite(value), field, f"must be finite or None, got {value}")
    scale = initial_logit_scale(config)
    _check(
        scale <= math.log(config.max_logit_scale),
        "init_logit_scale" if config.init_logit_scale is not None else "max_logit_scale",
        f"the initial multiplier exp({scale:.4g}) exceeds max_logit_scale {config.max_logit_scale} "
        "(init_logit_scale is the log of the multiplier)",
    )
    _check(
        config.init_logit_bias is None or LOSS_LOGIT_INIT[config.loss][1] is not None,
        "init_logit_bias",
        f"the {config.loss} loss has no logit bias; leave it None (only siglip uses one)",
    )


def _validate_flip(config: ml_collections.ConfigDict) -> None:
    """flip.mask_ratio in [0, 1), keeping a patch, for ViT towers only; flip.unmasked_steps in [0, total_steps]."""
    ratio = config.flip.mask_ratio
    _check(0 <= ratio < 1, "flip.mask_ratio", f"must be in [0, 1), got {ratio}")
    _check(
        0 <= config.flip.unmasked_steps <= config.total_steps, "flip.unmasked_steps", "must be in [0, total_steps]"
    )
    if ratio == 0:
        return
    vision = {**dataclasses.asdict(MODEL_SPECS[config.model].vision), **(config.model_overrides.get("vision") or {})}
    _check(
        vision["patch_size"] is not None,
        "flip.mask_ratio",
        f"masks ViT patch tokens, but {config.model} has a ResNet image tower; set it to 0",
    )
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    _check(round((1 - ratio) * patches) >= 1, "flip.mask_ratio", f"{ratio} keeps none of the {patches} patches")


def uses_loss_blocks(config: ml_collections.ConfigDict) -> bool:
    """Whether config.loss compares every pair of the global batch (in tiles of loss_block_size)."""
    return config.loss != "clip_lite" or config.clip_lite.negatives == "hardest"


def _validate_clip_lite(config: ml_collections.ConfigDict) -> None:
    """clip_lite.negatives one of CLIP_LITE_NEGATIVES; critic heads only where both towers train."""
    lite = config.clip_lite
    _check(lite.negatives in CLIP_LITE_NEGATIVES, "clip_lite.negatives", f"{lite.negatives!r} is not one of {CLIP_LITE_NEGATIVES}")
    _check(lite.critic_dim >= 0, "clip_lite.critic_dim", "must be >= 0 (0: no critic heads)")
    _check(
        not (config.loss == "clip_lite" and lite.critic_dim and locked_towers(config)),
        "clip_lite.critic_dim",
        "critic heads train together with both towers; set it to 0 when config.lit locks a tower",
    )


def _validate_declip(config: ml_collections.ConfigDict) -> None:
    """Weights for DeCLIP's four terms, a queue of whole batches, a masking rate in (0, 1); no FLIP or LiT with it."""
    d = config.declip
    terms = ("multi_view", "image_ssl", "text_ssl", "nearest_neighbour")
    _check(sorted(d.weights) == sorted(terms), "declip.weights", f"needs exactly the weights {terms}")
    _check(all(w >= 0 for w in d.weights.values()), "declip.weights", "must be >= 0")
    _check(d.projection_dim >= 2, "declip.projection_dim", "must be at least 2")
    _check(0 < d.mlm_rate < 1, "declip.mlm_rate", f"must be in (0, 1), got {d.mlm_rate}")
    _check(d.mlm_max_predictions >= 1, "declip.mlm_max_predictions", "must be at least 1")
    if config.loss != "declip":
        return
    _check(
        d.queue_size >= config.batch_size and d.queue_size % config.batch_size == 0,
        "declip.queue_size",
        f"{d.queue_size} must be a positive multiple of batch_size {config.batch_size} (the queue holds whole batches)",
    )
    _check(config.flip.mask_ratio == 0, "flip.mask_ratio", "FLIP's masking is not combined with loss=declip; set it to 0")
    _check(not locked_towers(config), "lit.lock_image", "DeCLIP trains both towers; unlock them or use another loss")


def _validate_lm(config: ml_collections.ConfigDict) -> None:
    """config.lm and config.limber for the next-token losses; none of the contrastive-only features with them."""
    if config.loss not in LM_LOSSES:
        return
    _check(config.lm.name in list_lms(), "lm.name", f"unknown language model {config.lm.name!r}; one of {list_lms()}")
    fields = {f.name for f in dataclasses.fields(LMConfig)}
    unknown = sorted(set(config.lm.overrides.keys()) - fields)
    _check(not unknown, "lm.overrides", f"unknown LMConfig field(s) {unknown}; valid: {sorted(fields)}")
    for field in ("dtype", "remat_policy"):
        _check(field not in config.lm.overrides, f"lm.overrides.{field}", f"set config.{field} instead")
    _check(
        config.data.tokenizer == "clip" or config.data.tokenizer.startswith("gpt2:"), "data.tokenizer",
        f"{config.loss} needs a tokenizer whose captions start with a start token (one of {LM_TOKENIZERS})",
    )
    _check(config.data.context_length >= 2, "data.context_length", "a caption LM needs at least 2 tokens")
    for field in ("init_logit_scale", "init_logit_bias"):
        _check(config[field] is None, field, f"{config.loss} has no logit scale or bias; leave it None")
    _check(config.flip.mask_ratio == 0, "flip.mask_ratio", f"FLIP's patch masking is not used by {config.loss}")
    _check(
        not config.evals or config.loss == "limber", "evals",
        f"{config.loss} trains on captions alone, without images: it has no evals",
    )
    lit = config.lit
    _check(
        not (lit.lock_image or lit.lock_text or lit.init_image_from), "lit",
        f"{config.loss} does not use config.lit (LiMBeR always freezes both towers: config.limber)",
    )
    if config.loss != "limber":
        return
    limber = config.limber
    _check(limber.prefix in LIMBER_PREFIXES, "limber.prefix", f"{limber.prefix!r} is not one of {LIMBER_PREFIXES}")
    if limber.prefix == "pooled":
        _check(limber.num_prompts >= 1, "limber.num_prompts", "a pooled prefix needs num_prompts >= 1")
    else:
        _check(limber.num_prompts >= 0, "limber.num_prompts", "must be 0 (the grid's size) or the grid's size")
    _check(bool(limber.image_from), "limber.image_from", "LiMBeR's image tower is frozen: name CLIP weights or a run")
    _check(bool(limber.lm_from), "limber.lm_from", "LiMBeR's LM is frozen: name a causal_lm run or LM weights")
    _check(not config.init_from, "init_from", "LiMBeR loads its towers from config.limber.image_from and lm_from")


def validate_batch_layout(config: ml_collections.ConfigDict, batch_shards: int) -> None:
    """The checks that need the number of devices the batch is split over (mesh data x fsdp)."""
    _check(
        (config.batch_size // config.num_microbatches) % batch_shards == 0,
        "batch_size",
        f"{config.batch_size} in {config.num_microbatches} micro-batch(es) does not split over "
        f"{batch_shards} batch shards",
    )
    local = config.batch_size // batch_shards  # the loss sees the whole batch, also with micro-batches
    if config.loss_impl == "blockwise" and uses_loss_blocks(config):
        _check(
            local % min(config.loss_block_size, local) == 0,
            "loss_block_size",
            f"{config.loss_block_size} must divide the per-device batch {local} "
            f"(batch_size / {batch_shards} batch shards) or be at least it",
        )


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first bad field; touches no device."""
    _check(config.model in list_models(), "model", f"unknown model {config.model!r}; one of {list_models()}")
    _check(config.dtype in DTYPES, "dtype", f"{config.dtype!r} is not one of {DTYPES}")
    _check(config.remat_policy in REMAT_POLICIES, "remat_policy", f"{config.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
    _check(config.loss in LOSSES, "loss", f"{config.loss!r} is not one of {LOSSES}")
    _check(config.loss_impl in LOSS_IMPLS, "loss_impl", f"{config.loss_impl!r} is not one of {LOSS_IMPLS}")
    _check(config.loss_block_size > 0, "loss_block_size", "must be positive")
    _check(config.max_logit_scale > 0, "max_logit_scale", "must be positive")
    if config.loss not in LM_LOSSES:
        _validate_logit_init(config)
    _validate_clip_lite(config)
    _validate_declip(config)
    _check(config.batch_size > 0, "batch_size", "must be positive")
    _check(config.num_microbatches >= 1, "num_microbatches", "must be at least 1")
    _check(
        config.batch_size % config.num_microbatches == 0,
        "num_microbatches",
        f"{config.num_microbatches} does not divide batch_size {config.batch_size}",
    )
    _check(config.total_steps > 0, "total_steps", "must be positive")
    _validate_flip(config)
    opt = config.optimizer
    _check(opt.learning_rate > 0, "optimizer.learning_rate", "must be positive")
    _check(0 <= opt.warmup_steps <= config.total_steps, "optimizer.warmup_steps", "must be in [0, total_steps]")
    _check(0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, "optimizer.b1", "betas must be in [0, 1)")
    _check(opt.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
    _check(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm", "must be >= 0 (0 disables clipping)")
    for axis in ("data", "fsdp", "tensor"):
        size = config.mesh[axis]
        _check(size == -1 or size >= 1, f"mesh.{axis}", f"must be -1 (the rest) or >= 1, got {size}")
    _check(
        sum(config.mesh[a] == -1 for a in ("data", "fsdp", "tensor")) <= 1, "mesh", "at most one axis may be -1"
    )
    _check(config.data.context_length > 0, "data.context_length", "must be positive")
    _check(config.data.num_streams >= 0, "data.num_streams", "must be >= 0 (0: one per process)")
    _check(
        not config.data.chain_captions or config.loss == "causal_lm", "data.chain_captions",
        "chains the captions a caption LM trains on (loss causal_lm)",
    )
    _validate_lit(config)
    _validate_lm(config)
    _check(config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be positive")
    _check(config.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
    _check(config.log_every_steps > 0, "log_every_steps", "must be positive")
    eval_types = (CAPTIONING_EVAL,) if config.loss == "limber" else EVAL_TYPES
    for name, spec in config.evals.items():
        _check(
            spec.get("type") in eval_types, f"evals.{name}.type",
            f"{spec.get('type')!r} is not one of {eval_types}, the evals of loss {config.loss!r}",
        )
        _check(bool(spec.get("data")), f"evals.{name}.data", "needs a data source string")
        _check(spec.get("every_steps", 0) > 0, f"evals.{name}.every_steps", "must be positive")
        if spec.type == "zeroshot":  # templates: the data set's shipped ones, else OpenAI's 80 ImageNet prompts
            _check(
                bool(spec.get("classnames")) or find_benchmark(spec.data) is not None,
                f"evals.{name}.classnames",
                f"zero-shot needs class names: {spec.data!r} has no shipped ones (TFDS sets that have: "
                f"{', '.join(list_benchmarks())}); set classnames",
            )
        _check(isinstance(spec.get("optional", False), bool), f"evals.{name}.optional", "must be True or False")
        if spec.type == "linear_probe":
            _check(bool(spec.get("train_data")), f"evals.{name}.train_data", "a linear probe needs a train_data source")
        if "val_data" in spec:
            _check(spec.type == "linear_probe", f"evals.{name}.val_data", "only a linear probe takes a val_data source")
            _check(bool(spec.val_data), f"evals.{name}.val_data", "needs a data source string (or leave it out)")
