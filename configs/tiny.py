r"""A tiny CLIP trained on the generated `shapes` data set: the CPU demo.

    python -m clip_jax.main --config=configs/tiny.py --workdir=/tmp/clip_tiny

ViT-Tiny-8 (32 px images, 4 + 4 layers of width 128, float32) for 600 steps
of batch 64 on `shapes` (coloured shapes with varied captions). On 2 CPU cores
it takes about 3.5 minutes (more with other load) and ends with zero-shot top-1
(prompted with the shape names; chance 1/6 = 0.167) of 0.63-0.70 on fresh
images of the training (shape, colour) combinations (`shapes_val/top1`, last
runs with seeds 0 / 1 / 2: 0.696 / 0.632 / 0.702) and 0.40-0.60 on the held-out
combinations (`shapes_heldout/top1`: 0.402 / 0.442 / 0.600), and image-text
retrieval over 500 images with two captions each of R@1 about 0.2
(`shapes_retrieval/i2t_R@1` 0.21 / 0.18 / 0.16; chance 0.002).
"""
import ml_collections

from clip_jax.config import default_config
from clip_jax.data.shapes import TEMPLATES, classnames


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-Tiny-8"
    config.dtype = "float32"
    config.model_overrides = ml_collections.ConfigDict({"text": {"context_length": 24}})
    config.data.train = "shapes#size=32"
    config.data.context_length = 24
    config.data.shuffle_buffer = 1000
    config.batch_size = 64
    config.total_steps = 600
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 50
    config.optimizer.b2 = 0.98
    config.optimizer.weight_decay = 0.1
    config.checkpoint_every_steps = 200
    config.log_every_steps = 50
    config.progress_every_seconds = 30.0
    zeroshot = dict(type="zeroshot", classnames=classnames("shape"), templates=list(TEMPLATES), every_steps=300)
    config.evals = ml_collections.ConfigDict({
        "shapes_val": dict(zeroshot, data="shapes:val#size=32&n=500"),
        "shapes_heldout": dict(zeroshot, data="shapes:eval#size=32&n=500"),
        "shapes_retrieval": dict(type="retrieval", data="shapes:val#size=32&n=500", num_captions=2, every_steps=300),
    })
    return config
