r"""DeCLIP (Li et al. 2021, "Supervision Exists Everywhere: A Data Efficient Contrastive Language-Image
Pre-training Paradigm") with a ViT-B/32: CLIP's loss plus self-, multi-view and nearest-neighbour supervision.

    python -m clip_jax.main --config=configs/declip_vit_b32.py --workdir=gs://bucket/declip_b32 \
        --config.data.train='wds:/data/yfcc15m/{00000..01535}.tar'

Each step (clip_jax.training.objectives.declip) sees two random crops of every image (the second flipped at
random) and the caption with an EDA-augmented copy (synonym replacement, random swap or random
deletion, from the synonym list shipped in clip_jax/data/synonyms.txt), all made in tf.data and seeded
like the rest of the input. The loss, with DeCLIP's weights:
  0.6  InfoNCE averaged over the 2 image views x 2 captions,
  0.2  SimSiam between the views (projector 1024-1024-1024 with BatchNorm, bottleneck predictor 512),
  0.2  masked language modelling of the caption on the text tower (15% of the tokens that are not
       start, end or padding; 80% [MASK], 10% random, 10% kept; a vocabulary head),
  0.2  InfoNCE of each view against the nearest neighbours of its captions in a FIFO queue of 65,536
       caption embeddings (16 batches), kept in the train state and checkpointed.

As DeCLIP's code: 2 x 2 views, those weights, the queue size, 224 px. What differs: AdamW with
OpenAI's CLIP hyperparameters (lr 5e-4, beta2 0.98, wd 0.2, 2k warmup + cosine) at batch 4,096 replaces
DeCLIP's Nesterov SGD (warmup to 0.2, cosine over 300k iterations); the second view is a random crop and
flip (DeCLIP: MoCo v2's colour jitter, grayscale and blur as well); the text tower is CLIP's causal
transformer with one more vocabulary row for [MASK]; the queue stores the captions only (DeCLIP also
enqueues the EDA captions). DeCLIP reports 60.4% ImageNet zero-shot top-1 for its ResNet-50 trained on
56M pairs; this recipe has not been run to completion here. On the built-in `shapes` data the same
objective trains the tiny model through clip_jax.main in tests/integration/test_recipes.py (docs/recipes.md).
"""
import ml_collections

from clip_jax.config import default_config, imagenet_zeroshot_eval


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-B-32"
    config.scan_layers = True  # one compiled block per tower (docs/benchmarks.md: Speed against open_clip)
    config.loss = "declip"
    config.data.train = "wds:/data/yfcc15m/{00000..01535}.tar"
    config.data.min_crop_scale = 0.2  # MoCo v2's crop range for both views
    config.batch_size = 4096
    config.total_steps = 120_000  # 32 epochs of 15M pairs
    config.declip.queue_size = 65_536
    config.checkpoint_every_steps = 2000
    config.evals.imagenet = imagenet_zeroshot_eval(every_steps=10_000)  # skipped until imagenet2012 is prepared
    return config
