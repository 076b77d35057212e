r"""CLIP ViT-B/16 with OpenAI's recipe (as configs/vit_b32.py: AdamW lr 5e-4, beta2
0.98, eps 1e-6, weight decay 0.2, 2,000 warmup steps, cosine, batch 32,768).

    python -m clip_jax.main --config=configs/vit_b16.py --workdir=gs://bucket/vit_b16 \
        --config.data.train='wds:/data/laion400m/{00000..41407}.tar'

32 epochs of 400M pairs reach about 67-68% zero-shot top-1 on ImageNet (OpenAI:
68.3%; open_clip on LAION-400M: 67.1%). About 4.4x the FLOPs of ViT-B/32 per image.
"""
import ml_collections

from clip_jax.config import default_config, imagenet_zeroshot_eval


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-B-16"
    config.scan_layers = True  # one compiled block per tower (docs/benchmarks.md: Speed against open_clip)
    config.data.train = "wds:/data/laion400m/{00000..41407}.tar"
    config.total_steps = 390_000
    config.evals.imagenet = imagenet_zeroshot_eval(every_steps=10_000)  # skipped until imagenet2012 is prepared
    return config
