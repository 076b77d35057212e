r"""A small caption language model trained from scratch on the `shapes` captions: LiMBeR's LM (CPU demo).

    python -m clip_jax.main --config=configs/lm_shapes.py --workdir=/tmp/lm_shapes

loss="causal_lm": next-token cross-entropy over the caption tokens of the
built-in `shapes` data set (no download), CLIP BPE tokens (vocabulary 49,408,
captions of at most 15 tokens, context 16). The LM is GPT-J's layout
(rotary positions, parallel blocks) with a tied head, 2 layers of width 64:
rotary positions are relative, so the captions it learns at positions
0..14 read the same after LiMBeR's image prefix (configs/limber_shapes.py).
Batch 64, 500 steps at about 1 s a step on 2 CPU cores (~8-10 minutes). The loss (nats per caption
token after the start token) starts at ln 49408 = 10.8 (uniform over the
vocabulary); the captions are templates with a random size, colour, shape
and place, so without the image the colour and shape words cannot be
predicted better than their frequencies. A 100-step probe (same config,
total_steps=100) logged loss 3.36 / token accuracy 0.27 at step 50 and
1.64 / 0.56 at step 100; the figures of the full 500 steps are not yet
measured.
"""
import ml_collections

from clip_jax.config import default_config

LM = dict(width=64, heads=4, layers=2, mlp_dim=256, tie_embeddings=True, head_bias=False, max_positions=64)


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.loss = "causal_lm"
    config.dtype = "float32"
    config.lm.name = "gpt-j-tiny"
    config.lm.overrides = ml_collections.ConfigDict(LM)
    config.data.train = "shapes#size=32"  # the pipeline decodes images too; a text-only run drops them
    config.data.context_length = 32  # two captions of at most 15 tokens each, chained
    config.data.chain_captions = True  # [SOT, caption 1, SOT, caption 2, EOT]: the second names what the first did
    config.data.shuffle_buffer = 1000
    config.batch_size = 64
    config.total_steps = 1500
    config.optimizer.learning_rate = 3e-3
    config.optimizer.warmup_steps = 50
    config.optimizer.weight_decay = 0.01
    config.checkpoint_every_steps = 500
    config.log_every_steps = 100
    config.progress_every_seconds = 30.0
    config.evals = ml_collections.ConfigDict()
    return config
