"""The defaults every recipe starts from: one comment per field.

Recipes in configs/ call `default_config()` and change what differs; every
field can be overridden on the command line (`--config.batch_size=64`).
`clip_jax.config.validation.validate(config)` checks a config before
anything is compiled and names the bad field.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


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
    # A step whose loss, gradient or new state is not finite changes nothing (clip_jax.training.nonfinite);
    # this many of them in a row end the run. Checkpoints are only written after a finite step.
    c.max_nonfinite_steps = 100
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
    #   weights directory (clip_jax.import_weights --lm); both required, both must fit config.model / config.lm.
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
