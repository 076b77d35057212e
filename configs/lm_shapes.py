r"""A small caption language model trained from scratch on the `shapes` captions: LiMBeR's LM (CPU demo).

    python -m clip_jax.main --config=configs/lm_shapes.py --workdir=/tmp/lm_shapes

loss="causal_lm": next-token cross-entropy over the caption tokens of the
built-in `shapes` data set (no download), CLIP BPE tokens (vocabulary 49,408).
Each row chains an image's two captions (data.chain_captions: start,
caption, start, the other caption, end; context 32), so the LM learns to
name again the colour and shape that earlier context named: the reading
that lets LiMBeR's image prefix take the first caption's place
(configs/limber_shapes.py). The LM is GPT-J's layout (rotary positions,
parallel blocks) with a tied head, 2 layers of width 64; rotary positions
are relative, so the captions read the same after an image prefix.
Batch 64, 1,500 steps. The loss (nats per caption token after the start
token) starts at ln 49408 = 10.8; the first caption's colour, shape, size
and place are a guess, the second's colour and shape are not. Last run:
loss 0.69 / token accuracy 0.69 at the end (45 minutes on 2 CPU cores shared
with a test run), and given "<start> a small {colour} {shape} in the center
<start> a photo of a big {colour}" it names the same shape, and given
"... <start> a photo of a big" the same colour, for all 36 (shape, colour)
pairs. With a 500-step schedule it repeats the colour but guesses the shape
(6 of 36), and LiMBeR then names no shape above chance.
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
