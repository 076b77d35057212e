"""clip_jax: CLIP-style image-text models, losses, tokenizers and training in JAX/Flax.

`clip_jax.data` (the tf.data input pipeline) imports TensorFlow and is left
to an explicit `from clip_jax import data`.
"""
from clip_jax import convert, evaluation, losses, models, tokenizers
from clip_jax.captioner import Captioner, load_captioner
from clip_jax.inference import Pretrained, load
from clip_jax.models import create_model, list_models

__all__ = [
    "Captioner", "Pretrained", "convert", "create_model", "evaluation", "list_models", "load", "load_captioner",
    "losses", "models", "tokenizers",
]
