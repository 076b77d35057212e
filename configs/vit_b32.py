r"""CLIP ViT-B/32 with OpenAI's recipe: AdamW (lr 5e-4, beta2 0.98, eps 1e-6, weight
decay 0.2 on matrices only), 2,000 warmup steps then cosine, global batch 32,768,
logit scale clamped at 100, bfloat16 compute.

    python -m clip_jax.main --config=configs/vit_b32.py --workdir=gs://bucket/vit_b32 \
        --config.data.train='wds:/data/laion400m/{00000..41407}.tar'

32 epochs of 400M pairs (--config.total_steps=390_000) reach about 63% zero-shot
top-1 on ImageNet (OpenAI's WIT-400M: 63.2%; open_clip on LAION-400M: 62.9%).
"""
import ml_collections

from clip_jax.config import default_config, imagenet_zeroshot_eval


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-B-32"
    config.scan_layers = True  # one compiled block per tower (docs/benchmarks.md: Speed against open_clip)
    config.data.train = "wds:/data/laion400m/{00000..41407}.tar"
    config.total_steps = 390_000
    config.evals.imagenet = imagenet_zeroshot_eval(every_steps=10_000)  # skipped until imagenet2012 is prepared
    return config
