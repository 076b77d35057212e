"""Linen modules for CLIP-style models, and their named architectures (`architectures`: open_clip's names, `create_model`)."""
from clip_jax.models.clip import CLIP, l2_normalize
from clip_jax.models.architectures import MODEL_SPECS, ModelSpec, TextSpec, VisionSpec, create_model, list_models, model_spec
from clip_jax.models.resnet import ModifiedResNet
from clip_jax.models.text import TextTransformer
from clip_jax.models.vit import VisionTransformer

__all__ = [
    "CLIP",
    "MODEL_SPECS",
    "ModelSpec",
    "ModifiedResNet",
    "TextSpec",
    "TextTransformer",
    "VisionSpec",
    "VisionTransformer",
    "create_model",
    "l2_normalize",
    "list_models",
    "model_spec",
]
