r"""SigLIP ViT-B/16: the pairwise sigmoid loss (Zhai et al. 2023) instead of CLIP's softmax.

    python -m clip_jax.main --config=configs/siglip_b16.py --workdir=gs://bucket/siglip_b16 \
        --config.data.train='wds:/data/laion400m/{00000..41407}.tar'

As the paper trains from scratch: sigmoid loss with a learned temperature
starting at log 10 and a learned bias starting at -10 (both logged), batch
32,768, AdamW with lr 1e-3, weight decay 1e-4 and beta2 0.95 (the paper's
setting for stable large-batch training). The loss runs blockwise: each device
exchanges its text embeddings with its neighbours in a ring and never holds the
32k x 32k logits. The towers are CLIP's (open_clip's ViT-B-16 with the 77-token
BPE text tower), not SigLIP's own text tower. The paper's SigLIP B/16 (WebLI,
224 px) reaches about 76% ImageNet zero-shot top-1 (open_clip's evaluation of
the released weights: 76.0%); on LAION-400M for 32 epochs expect the order of
CLIP ViT-B/16's 67% (configs/vit_b16.py); not yet measured here.
"""
import ml_collections

from clip_jax.config import default_config, imagenet_zeroshot_eval


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-B-16"
    config.scan_layers = True  # one compiled block per tower (docs/benchmarks.md: Speed against open_clip)
    config.loss = "siglip"  # init: scale 10, bias -10 (config.init_logit_scale / init_logit_bias override)
    config.loss_impl = "blockwise"
    config.data.train = "wds:/data/laion400m/{00000..41407}.tar"
    config.total_steps = 390_000
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.b2 = 0.95
    config.evals.imagenet = imagenet_zeroshot_eval(every_steps=10_000)  # skipped until imagenet2012 is prepared
    return config
