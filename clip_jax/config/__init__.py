"""The training config: its defaults (`defaults`), the error that names a bad field (`errors`),
and the checks a config passes before anything is compiled (`validation`, which asks each
method's objective, `clip_jax.training.objectives`, for the checks of its own fields).

    from clip_jax.config import default_config
    from clip_jax.config.validation import validate

`defaults` and `errors` import nothing of clip_jax, so a recipe in configs/ loads without the models.
"""
from clip_jax.config.defaults import default_config, imagenet_zeroshot_eval
from clip_jax.config.errors import ConfigError

__all__ = ["ConfigError", "default_config", "imagenet_zeroshot_eval"]
