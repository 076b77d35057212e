r"""LiT (Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning"): a ViT-B/16 image
tower locked at imported weights, a text tower trained from scratch against it (the paper's "Lu").

Import the image tower first (OpenAI's weights use QuickGELU; the whole model is converted, the
run takes only its 'visual' subtree):

    python -m clip_jax.import_weights --checkpoint ViT-B-16.pt --model ViT-B-16-quickgelu \
        --output weights/vit_b16_openai
    python -m clip_jax.main --config=configs/lit_b16.py --workdir=gs://bucket/lit_b16 \
        --config.lit.init_image_from=weights/vit_b16_openai \
        --config.data.train='wds:/data/laion400m/{00000..41407}.tar'

For open_clip's LAION weights (plain GELU) import with `--model ViT-B-16` and add
`--config.model=ViT-B-16`. "LU" (text tower also from the weights): `--config.init_from=DIR
--config.lit.init_image_from=''`. The image tower gets no gradient, no optimizer state and no
update; a step costs its forward pass only (tests/test_lit.py).

Hyperparameters from big_vision's LiT config (big_vision/configs/proj/image_text/lit_coco.py):
Adam, learning rate 1e-3, weight decay 1e-2, gradient clipping at norm 1, 3% linear warmup then
cosine, softmax (CLIP) loss with the temperature starting at 10; batch 16,384 as in the paper's
experiments; 60k steps as LiT-B16B_2 (big_vision README_lit.md). LiT used 16 text tokens; this
keeps CLIP's 77 so that "LU" can load CLIP text towers.

What the paper's authors report (big_vision README_lit.md, model card in
google-research/vision_transformer): ImageNet zero-shot 72.1% for LiT-B16B (30k steps) and 73.9%
for LiT-B16B_2 (60k steps), image tower ViT-B/16 pre-trained on ImageNet-21k, text tower BERT-base,
trained on CC12M + YFCC100M. A CLIP image tower is a different starting point (OpenAI's whole
ViT-B/16 reaches 68.3%); this recipe has not been run to completion here.
"""
import math

import ml_collections

from clip_jax.config import default_config, imagenet_zeroshot_eval


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.model = "ViT-B-16-quickgelu"
    config.scan_layers = True  # one compiled block per tower (docs/benchmarks.md: Speed against open_clip)
    config.data.train = "wds:/data/laion400m/{00000..41407}.tar"
    config.lit.lock_image = True
    config.lit.init_image_from = "weights/vit_b16_openai"
    config.init_logit_scale = math.log(10.0)
    config.batch_size = 16384
    config.total_steps = 60_000
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = int(0.03 * config.total_steps)
    config.optimizer.b2 = 0.999
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 1e-2
    config.optimizer.grad_clip_norm = 1.0
    config.evals.imagenet = imagenet_zeroshot_eval(every_steps=10_000)  # skipped until imagenet2012 is prepared
    return config
