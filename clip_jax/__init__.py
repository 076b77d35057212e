"""clip_jax: CLIP-style image-text models, losses, tokenizers and training in JAX/Flax."""
from clip_jax import convert, models, tokenizers
from clip_jax.models import create_model, list_models

__all__ = ["convert", "create_model", "list_models", "models", "tokenizers"]
