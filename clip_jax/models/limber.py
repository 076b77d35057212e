"""LiMBeR (Merullo et al. 2023, "Linearly mapping from image to text space"): image features as a soft prompt.

A frozen image tower (`visual`, any clip_jax image tower), a frozen causal LM
(`text`, a `clip_jax.lm.CausalLM`) and one trained linear map (`projection`)
from image features to k vectors in the LM's input space:

    model = create_limber("ViT-Tiny-8", "gpt2-tiny", prefix="grid")
    variables = model.init(rng, images, tokens)       # params {'visual', 'text', 'projection'}, maybe batch_stats
    logits = model.apply(variables, images, tokens)   # [B, L - 1, V]: tokens[:, 1:] predicted after the prefix
    prefix = model.apply(variables, images, method=model.prefix)          # [B, k, D]
    new_tokens = caption(model, variables, images, start_id=49406, max_new_tokens=20)   # KV-cache decoding

Prefixes (`prefix_type`):
  "pooled": the tower's embedding [B, E] -> [B, k, D] by one Dense of k * D outputs (k = num_prompts);
  "grid":   the tower's spatial features [B, n, C] -> [B, n, D] by one Dense (k = n): a ModifiedResNet's
            map before attention pooling (RN50x16 at 384 px: 12 x 12 x 3072, k = 144 as in the paper),
            a ViT's patch tokens after the last block with ln_post applied (the class token dropped).

The LM reads concat(prefix, embed(tokens[:, :-1])) and its logits at the
caption positions predict tokens[:, 1:]: the caption's first token (CLIP
BPE's start-of-text) is the prompt, and the image positions are never
scored. The image features are behind stop_gradient and the tower runs in
inference mode (its BatchNorm statistics are constants). The LM's
activations must carry the gradient back to the prefix, so the objective
(`clip_jax.training.objectives.limber`) stops the LM's *parameters* instead; the
top-level names 'visual' and 'text' are those LiT's locking uses
(`clip_jax.training.optim.tower_labels`), so neither frozen part gets optimizer state.

`CaptionLM` is the LM alone (loss "causal_lm"), its parameters under 'text'
too, so a caption LM's run is what a LiMBeR run loads its LM from.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.lm import generate
from clip_jax.lm.presets import create_lm
from clip_jax.models.layers import normal, param_with_axes
from clip_jax.models.architectures import create_model
from clip_jax.models.resnet import ModifiedResNet

PREFIX_TYPES = ("grid", "pooled")
RESNET_STRIDE = 32  # a ModifiedResNet's feature map is the image downsampled 32x (stem 4x, three stages 2x)


def grid_cells(visual: nn.Module) -> int:
    """Cells n of an image tower's spatial grid: ViT patches, or the ResNet map's h * w."""
    if isinstance(visual, ModifiedResNet):
        return (visual.image_size // RESNET_STRIDE) ** 2
    return visual.num_patches


def feature_width(visual: nn.Module, prefix_type: str) -> int:
    """The width of the features the projection reads: the embedding E ("pooled") or the grid's channels C."""
    if prefix_type == "pooled":
        return visual.output_dim
    return visual.width * RESNET_STRIDE if isinstance(visual, ModifiedResNet) else visual.width


class Limber(nn.Module):
    """Frozen image tower + frozen causal LM + one trained linear map (see the module docstring)."""

    visual: nn.Module
    text: nn.Module  # a clip_jax.lm.CausalLM (clip_jax.lm.interface.CausalLanguageModel)
    prefix_type: str = "grid"
    num_prompts: int = 0  # k of the "pooled" prefix; "grid" takes k from the tower (0 or that number)

    @property
    def prefix_length(self) -> int:
        """k: soft-prompt vectors per image."""
        return self.num_prompts if self.prefix_type == "pooled" else grid_cells(self.visual)

    def setup(self) -> None:
        if self.prefix_type not in PREFIX_TYPES:
            raise ValueError(f"prefix must be one of {PREFIX_TYPES}, got {self.prefix_type!r}")
        if self.prefix_type == "pooled" and self.num_prompts < 1:
            raise ValueError(f"a pooled prefix needs num_prompts >= 1, got {self.num_prompts}")
        if self.prefix_type == "grid" and self.num_prompts not in (0, grid_cells(self.visual)):
            raise ValueError(
                f"a grid prefix has one vector per grid cell, {grid_cells(self.visual)}; num_prompts "
                f"{self.num_prompts} must be 0 or that"
            )
        width = self.text.config.width
        outputs = width * (self.num_prompts if self.prefix_type == "pooled" else 1)
        fan_in = feature_width(self.visual, self.prefix_type)
        self.projection = nn.Dense(
            outputs,
            dtype=self.text.config.dtype,
            param_dtype=jnp.float32,
            # unit-variance features give prefix entries of std 0.02, the scale of GPT-2's token embeddings at init
            kernel_init=param_with_axes(normal(0.02 * fan_in**-0.5), (None, "embed")),
            bias_init=param_with_axes(nn.initializers.zeros, ("embed",)),
        )

    def image_features(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, 3] -> the frozen tower's features, [B, E] ("pooled") or [B, n, C] ("grid"), constants."""
        if self.prefix_type == "pooled":
            features = self.visual(images, train=False)
        else:
            features = self.visual(images, train=False, grid=True)
            features = features.reshape(features.shape[0], -1, features.shape[-1])
        return jax.lax.stop_gradient(features)

    def prefix(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, 3] -> soft prompt [B, k, D] in the LM's compute dtype."""
        prefix = self.projection(self.image_features(images))
        if self.prefix_type == "pooled":
            prefix = prefix.reshape(prefix.shape[0], self.num_prompts, -1)
        return prefix

    def prompt(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """concat(prefix(images), embed(tokens)): [B, k + L, D], the LM's input for captions starting with `tokens`."""
        return jnp.concatenate([self.prefix(images), self.text.embed(tokens)], axis=1)

    def __call__(self, images: jax.Array, tokens: jax.Array) -> jax.Array:
        """The caption loss's forward: images [B, H, W, 3], tokens [B, L] -> logits [B, L - 1, V] float32.

        Row i of the logits predicts tokens[:, i + 1]; the prefix positions' logits are dropped.
        """
        if self.is_initializing() and self.prefix_type == "grid":
            self.visual(images)  # the pooling head's parameters too: the tree is a whole CLIP image tower's
        logits = self.text.forward(self.prompt(images, tokens[:, :-1]))
        return logits[:, self.prefix_length :]


class CaptionLM(nn.Module):
    """A causal LM trained alone on captions (loss "causal_lm"); its parameters sit under 'text' as in Limber.

    tokens [B, L] -> logits [B, L - 1, V], row i predicting tokens[:, i + 1].
    """

    text: nn.Module

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.text(tokens[:, :-1])


def caption(
    model: Limber,
    variables: dict[str, Any],
    images: jax.Array,
    *,
    start_id: int,
    max_new_tokens: int,
    eos_id: int | None = None,
    top_k: int | None = None,
    temperature: float = 1.0,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Caption tokens [B, max_new_tokens] after the image prefix and `start_id` (CLIP BPE: 49406, SOT).

    Greedy, or top-k sampling with `rng`; the prompt fills the LM's KV cache
    in one pass, then each token is one cached step (`clip_jax.lm.generate`).
    After `eos_id` a row emits 0.
    """
    start = jnp.full((images.shape[0], 1), start_id, jnp.int32)
    prompt = model.apply(variables, images, start, method=model.prompt)
    lm_variables = {"params": variables["params"]["text"]}
    return generate(
        model.text, lm_variables, prompt, max_new_tokens=max_new_tokens, top_k=top_k, temperature=temperature,
        rng=rng, eos_id=eos_id, pad_id=0,
    )


def _with_dtype(overrides: dict[str, Any] | None, dtype: Any) -> dict[str, Any]:
    overrides = dict(overrides or {})
    return {**overrides, "dtype": dtype} if dtype is not None else overrides


def create_caption_lm(lm: str, **lm_overrides: Any) -> CaptionLM:
    """A CaptionLM around `clip_jax.lm.create_lm(lm, **lm_overrides)`."""
    return CaptionLM(create_lm(lm, **lm_overrides))


def create_limber(
    image_model: str,
    lm: str,
    *,
    prefix: str = "grid",
    num_prompts: int = 0,
    image_overrides: dict[str, Any] | None = None,
    lm_overrides: dict[str, Any] | None = None,
    dtype: Any = None,
) -> Limber:
    """A Limber of `image_model`'s image tower (create_model(image_model, **image_overrides).visual) and
    create_lm(lm, **lm_overrides); `dtype` (compute) applies to both when given."""
    visual = create_model(image_model, **_with_dtype(image_overrides, dtype)).visual
    text = create_lm(lm, **_with_dtype(lm_overrides, dtype))
    return Limber(visual, text, prefix_type=prefix, num_prompts=num_prompts)
