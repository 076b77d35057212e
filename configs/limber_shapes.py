r"""LiMBeR on `shapes`: configs/tiny.py's image tower and configs/lm_shapes.py's LM, both frozen; one linear map trains.

    python -m clip_jax.main --config=configs/tiny.py --workdir=/tmp/clip_tiny
    python -m clip_jax.main --config=configs/lm_shapes.py --workdir=/tmp/lm_shapes
    python -m clip_jax.main --config=configs/limber_shapes.py --workdir=/tmp/limber_shapes \
        --config.limber.image_from=/tmp/clip_tiny --config.limber.lm_from=/tmp/lm_shapes

(the two paths shown are the defaults below). The grid prefix: ViT-Tiny-8's
16 patch tokens (4 x 4 at 32 px, width 128, after ln_post) -> 16 vectors of
the LM's width 64 by one Dense (8,256 parameters, the only ones that train;
the towers get no optimizer state and stay bit-identical), 300 steps of
batch 64, each image's caption after the prefix and the start token (the
prefix takes the place of the first caption the LM was trained to repeat).
The evals caption 200 fresh images of the training (shape, colour)
combinations (val_*) and 200 of the held-out ones (heldout_*) greedily;
"named" is the share of captions naming the image's colour (or shape) and no
other, chance 1/6. Last run (6 minutes on 2 CPU cores shared with a test
run; caption loss 0.90 at step 25 -> 0.64 at step 300): val colour 0.875,
val shape 0.605, BLEU-4 0.117, CIDEr-D 1.43; held-out colour 0.875, held-out
shape 0.075 (the LM never saw those shapes with those colours, and its
prior overrules the image there). `--config.limber.prefix=pooled
--config.limber.num_prompts=4` maps the pooled embedding instead.
tests/integration/test_limber_recipe.py (slow) runs all three.
"""
import os
import runpy

import ml_collections

from clip_jax.config import default_config
from clip_jax.data.shapes import classnames

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config() -> ml_collections.ConfigDict:
    tiny = runpy.run_path(os.path.join(HERE, "tiny.py"))["get_config"]()
    lm = runpy.run_path(os.path.join(HERE, "lm_shapes.py"))["get_config"]()
    config = default_config()
    config.loss = "limber"
    config.dtype = "float32"
    config.model = tiny.model  # the image tower: ViT-Tiny-8 ...
    config.model_overrides = tiny.model_overrides  # ... as configs/tiny.py built it (vision fields are read)
    config.lm = lm.lm  # the LM as configs/lm_shapes.py built it
    config.limber = ml_collections.ConfigDict(
        dict(image_from="/tmp/clip_tiny", lm_from="/tmp/lm_shapes", prefix="grid", num_prompts=0)
    )
    config.data = lm.data  # the same captions and tokenizer ...
    config.data.chain_captions = False  # ... one per image, after the image prefix in the first's place
    config.data.context_length = 16
    config.data.train = tiny.data.train  # images of 32 px
    config.batch_size = 64
    config.total_steps = 300
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 30
    config.optimizer.weight_decay = 0.0
    config.checkpoint_every_steps = 300
    config.log_every_steps = 25
    config.progress_every_seconds = 30.0
    # greedy captions of 200 fresh images (the training combinations) and 200 of the held-out (shape, colour)
    # combinations, scored against their captions; "named": the caption names the image's colour / shape only
    val, heldout = "shapes:val#size=32&n=200", "shapes:eval#size=32&n=200"
    config.evals = ml_collections.ConfigDict({
        f"{split}_{label}": dict(type="captioning", data=f"{data}&label={label}", classnames=classnames(label),
                                 every_steps=config.total_steps)
        for split, data in (("val", val), ("heldout", heldout)) for label in ("color", "shape")
    })
    return config
