"""Named architectures (open_clip's names) and `create_model`.

Every OpenAI architecture is registered twice: `NAME` with exact GELU in the
transformer MLPs (open_clip's LAION-trained weights) and `NAME-quickgelu` with
QuickGELU (OpenAI's released weights). Loading OpenAI weights into a GELU model
runs, but silently loses accuracy. open_clip's larger LAION architectures
(ViT-H-14, ViT-g-14, ViT-bigG-14) are registered as open_clip has them: with
a '-quickgelu' twin where open_clip has one (DFN's and MetaCLIP's weights).
ViT-SO400M-14-SigLIP is open_clip's SigLIP So400m/14: timm's MAP-pooled ViT
and SigLIP's bidirectional text tower, with a logit bias.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax.numpy as jnp

from clip_jax.models.clip import CLIP
from clip_jax.models.critic import Critic
from clip_jax.models.declip_heads import DeclipHeads
from clip_jax.models.layers import LN_EPS
from clip_jax.models.resnet import ModifiedResNet
from clip_jax.models.text import TextTransformer
from clip_jax.models.vit import VisionTransformer


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """Image tower: a ViT when `patch_size` is set, else a ModifiedResNet (`layers` per stage).

    The ViT fields after mlp_ratio (`models.vit.VisionTransformer`'s) default to OpenAI's ViT;
    SigLIP's has no class token or ln_pre, a patch-conv bias, LayerNorm eps 1e-6 and MAP pooling.
    """

    image_size: int
    width: int
    layers: int | tuple[int, ...]
    patch_size: int | None = None
    head_width: int = 64
    mlp_ratio: float = 4.0
    class_token: bool = True
    pre_norm: bool = True
    patch_bias: bool = False
    pool: str = "token"
    ln_eps: float = LN_EPS


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """Text tower (`models.text.TextTransformer`): OpenAI's by default, SigLIP's with causal=False,
    pool_type='end', proj_bias=True and ln_eps=1e-6."""

    width: int
    heads: int
    layers: int
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    pool_type: str = "argmax"
    causal: bool = True
    proj_bias: bool = False
    ln_eps: float = LN_EPS


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    embed_dim: int
    vision: VisionSpec
    text: TextSpec
    activation: str = "gelu"  # of the MLPs: "gelu" (exact), "quick_gelu" (OpenAI's) or "gelu_tanh" (big_vision's)
    init_logit_scale: float = CLIP.init_logit_scale
    init_logit_bias: float | None = None
    dtype: Any = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False
    critic_dim: int | None = None  # CLIP-Lite's critic heads with this output width; None: no heads
    declip_projection_dim: int | None = None  # DeCLIP's SimSiam and masked-LM heads; None: no heads


def _spec(embed_dim: int, vision: VisionSpec, text_width: int, text_heads: int, text_layers: int = 12) -> ModelSpec:
    return ModelSpec(embed_dim, vision, TextSpec(width=text_width, heads=text_heads, layers=text_layers))


_OPENAI = {
    "RN50": _spec(1024, VisionSpec(224, 64, (3, 4, 6, 3)), 512, 8),
    "RN101": _spec(512, VisionSpec(224, 64, (3, 4, 23, 3)), 512, 8),
    "RN50x4": _spec(640, VisionSpec(288, 80, (4, 6, 10, 6)), 640, 10),
    "RN50x16": _spec(768, VisionSpec(384, 96, (6, 8, 18, 8)), 768, 12),
    "RN50x64": _spec(1024, VisionSpec(448, 128, (3, 15, 36, 10)), 1024, 16),
    "ViT-B-32": _spec(512, VisionSpec(224, 768, 12, patch_size=32), 512, 8),
    "ViT-B-16": _spec(512, VisionSpec(224, 768, 12, patch_size=16), 512, 8),
    "ViT-L-14": _spec(768, VisionSpec(224, 1024, 24, patch_size=14), 768, 12),
    "ViT-L-14-336": _spec(768, VisionSpec(336, 1024, 24, patch_size=14), 768, 12),
}

# open_clip's LAION-scale ViTs; MLP widths are int(width * mlp_ratio), as open_clip computes them.
_LAION = {
    "ViT-H-14": _spec(1024, VisionSpec(224, 1280, 32, patch_size=14, head_width=80), 1024, 16, 24),
    "ViT-g-14": _spec(
        1024, VisionSpec(224, 1408, 40, patch_size=14, head_width=88, mlp_ratio=4.3637), 1024, 16, 24
    ),
    "ViT-bigG-14": _spec(
        1280, VisionSpec(224, 1664, 48, patch_size=14, head_width=104, mlp_ratio=4.9231), 1280, 20, 32
    ),
}
_LAION_QUICKGELU = ("ViT-H-14", "ViT-bigG-14")  # the ones open_clip also has as '-quickgelu'

# SigLIP's shape-optimised ViT (So400m/14, timm's tower) with SigLIP's own text tower, trained with the
# sigmoid loss: initial temperature 10, bias -10.
_SIGLIP = {
    "ViT-SO400M-14-SigLIP": ModelSpec(
        1152,
        VisionSpec(
            224, 1152, 27, patch_size=14, head_width=72, mlp_ratio=3.7362,
            class_token=False, pre_norm=False, patch_bias=True, pool="map", ln_eps=1e-6,
        ),
        TextSpec(
            width=1152, heads=16, layers=27, context_length=16, vocab_size=32000, mlp_ratio=3.7362,
            pool_type="end", causal=False, proj_bias=True, ln_eps=1e-6,
        ),
        init_logit_scale=math.log(10.0),
        init_logit_bias=-10.0,
    ),
}

# Small sizes for tests and CPU demos.
_SMALL = {
    "ViT-Tiny-8": ModelSpec(
        128, VisionSpec(32, 128, 4, patch_size=8, head_width=32), TextSpec(width=128, heads=4, layers=4)
    ),
    "RN-Tiny": ModelSpec(128, VisionSpec(64, 16, (1, 1, 1, 1), head_width=32), TextSpec(width=128, heads=4, layers=4)),
}

MODEL_SPECS: dict[str, ModelSpec] = {
    **{name: spec for table in (_OPENAI, _LAION, _SIGLIP, _SMALL) for name, spec in table.items()},
    **{f"{name}-quickgelu": dataclasses.replace(spec, activation="quick_gelu") for name, spec in _OPENAI.items()},
    **{f"{name}-quickgelu": dataclasses.replace(_LAION[name], activation="quick_gelu") for name in _LAION_QUICKGELU},
}
# The names open_clip has too (with the same state dict layout): all but the small test sizes.
OPEN_CLIP_NAMES = tuple(name for name in MODEL_SPECS if name not in _SMALL)


def list_models() -> list[str]:
    """Names accepted by `create_model`, OpenAI architectures first."""
    return list(MODEL_SPECS)


def _override(spec: Any, overrides: dict[str, Any], where: str) -> Any:
    fields = {f.name for f in dataclasses.fields(spec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {where} override(s) {unknown}; valid fields: {sorted(fields)}")
    if "layers" in overrides and isinstance(overrides["layers"], Sequence):
        overrides = {**overrides, "layers": tuple(overrides["layers"])}
    return dataclasses.replace(spec, **overrides)


def model_spec(name: str, **overrides: Any) -> ModelSpec:
    """The ModelSpec of `name` with top-level overrides; `vision=` / `text=` take dicts of tower fields."""
    if name not in MODEL_SPECS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    spec = MODEL_SPECS[name]
    vision = _override(spec.vision, dict(overrides.pop("vision", None) or {}), "vision")
    text = _override(spec.text, dict(overrides.pop("text", None) or {}), "text")
    return _override(dataclasses.replace(spec, vision=vision, text=text), overrides, "model")


def model_from_spec(spec: ModelSpec) -> CLIP:
    """A linen CLIP module from a ModelSpec."""
    v, t = spec.vision, spec.text
    spec = dataclasses.replace(spec, dtype=jnp.dtype(spec.dtype))  # also accepts "bfloat16"
    if v.patch_size is None:
        visual = ModifiedResNet(
            image_size=v.image_size,
            layers=tuple(v.layers),
            width=v.width,
            heads=v.width * 32 // v.head_width,
            output_dim=spec.embed_dim,
            dtype=spec.dtype,
        )
    else:
        visual = VisionTransformer(
            image_size=v.image_size,
            patch_size=v.patch_size,
            width=v.width,
            layers=v.layers,
            heads=v.width // v.head_width,
            output_dim=spec.embed_dim,
            mlp_ratio=v.mlp_ratio,
            activation=spec.activation,
            class_token=v.class_token,
            pre_norm=v.pre_norm,
            patch_bias=v.patch_bias,
            pool=v.pool,
            ln_eps=v.ln_eps,
            dtype=spec.dtype,
            remat_policy=spec.remat_policy,
            scan_layers=spec.scan_layers,
        )
    text = TextTransformer(
        context_length=t.context_length,
        vocab_size=t.vocab_size,
        width=t.width,
        layers=t.layers,
        heads=t.heads,
        output_dim=spec.embed_dim,
        mlp_ratio=t.mlp_ratio,
        activation=spec.activation,
        pool_type=t.pool_type,
        causal=t.causal,
        proj_bias=t.proj_bias,
        ln_eps=t.ln_eps,
        dtype=spec.dtype,
        remat_policy=spec.remat_policy,
        scan_layers=spec.scan_layers,
    )
    critics = {}
    if spec.critic_dim is not None:
        critics = {f"{tower}_critic": Critic(spec.critic_dim, dtype=spec.dtype) for tower in ("image", "text")}
    heads = None
    if spec.declip_projection_dim is not None:
        heads = DeclipHeads(spec.declip_projection_dim, t.vocab_size, dtype=spec.dtype)
    return CLIP(
        visual, text, init_logit_scale=spec.init_logit_scale, init_logit_bias=spec.init_logit_bias, **critics,
        heads=heads,
    )


def create_model(name: str, **overrides: Any) -> CLIP:
    """A linen CLIP module by name, e.g. create_model("ViT-B-32", dtype=jnp.bfloat16, scan_layers=True).

    Top-level overrides: embed_dim, activation, init_logit_scale,
    init_logit_bias, dtype (compute; parameters stay float32), remat_policy
    ('none' | 'full' | 'dots' | 'dots_no_batch'), scan_layers, critic_dim
    (CLIP-Lite's critic heads of that width on both towers),
    declip_projection_dim (DeCLIP's training heads, `models.declip_heads`); `vision={...}`
    and `text={...}` override tower fields (e.g. text={'vocab_size': 32000}).
    """
    return model_from_spec(model_spec(name, **overrides))
