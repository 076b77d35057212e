r"""CLIP RN50 (ModifiedResNet-50 with attention pooling) with OpenAI's ResNet recipe:
AdamW (lr 5e-4, beta2 0.999, eps 1e-8, weight decay 0.2 on matrices and conv
kernels only), 2,000 warmup steps then cosine, global batch 32,768, logit scale
clamped at 100, bfloat16 compute (BatchNorm statistics in float32).

    python -m clip_jax.main --config=configs/rn50.py --workdir=gs://bucket/rn50 \
        --config.data.train='wds:/data/laion400m/{00000..41407}.tar'

32 epochs of 400M pairs reach about 60% zero-shot top-1 on ImageNet (OpenAI's
RN50: 59.8%); on CC12M alone (--config.total_steps=11_000) open_clip reports 36%.
"""
import ml_collections

from clip_jax.config import default_config, imagenet_zeroshot_eval


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "RN50"
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.data.train = "wds:/data/laion400m/{00000..41407}.tar"
    config.total_steps = 390_000
    config.evals.imagenet = imagenet_zeroshot_eval(every_steps=10_000)  # skipped until imagenet2012 is prepared
    return config
