"""Captioning images with a trained LiMBeR model (config.loss = "limber").

    captioner = clip_jax.load_captioner("runs/limber_shapes")
    captioner([PIL.Image.open("cat.jpg")])                 # ["a small red circle in the center"]
    captioner(images, top_k=5, temperature=0.8, seed=1)    # sampled instead of greedy

Images are PIL images or uint8 arrays (preprocessed here as for CLIP:
resize, center crop, OpenAI's normalization) or float32 [N, S, S, 3]
already preprocessed. Captions are decoded in batches of a power of two up to
`batch_size`, one jitted program per batch shape and decoding setting.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from clip_jax.evaluation.batching import pad_rows
from clip_jax.evaluation.caption_eval import row_text
from clip_jax.inference.images import ImagePreprocess
from clip_jax.inference.pretrained import Images, default_dtype
from clip_jax.models.limber import Limber, caption
from clip_jax.tokenizers import get_tokenizer
from clip_jax.weights import storage as weights

DEFAULT_CONTEXT_LENGTH = 32  # captions of runs whose metadata does not record their context length


@dataclasses.dataclass(frozen=True)
class Captioner:
    """A LiMBeR model with its variables, image preprocessing and tokenizer: images -> caption strings."""

    model: Limber
    variables: dict[str, Any]
    preprocess: ImagePreprocess
    tokenizer: Any  # clip_jax.tokenizers: start and end ids, decode
    max_new_tokens: int
    batch_size: int = 64
    _compiled: dict[tuple[int, int | None], Callable[..., jax.Array]] = dataclasses.field(
        init=False, repr=False, default_factory=dict
    )

    def tokens(
        self, images: Images, *, max_new_tokens: int | None = None, top_k: int | None = None,
        temperature: float = 1.0, seed: int = 0,
    ) -> np.ndarray:
        """Caption ids int32 [N, max_new_tokens] after the image prefix and the start token (0 after the end token).

        Greedy when top_k is None, else top-k sampling at `temperature` from `seed`.
        """
        pixels = images if isinstance(images, np.ndarray) else self.preprocess.batch(images)
        if not len(pixels):
            raise ValueError("Nothing to caption: got 0 images")
        length = max_new_tokens or self.max_new_tokens
        decode = self._decoder(length, top_k)
        size = min(self.batch_size, 1 << (len(pixels) - 1).bit_length())
        rows = []
        for start in range(0, len(pixels), size):
            chunk = pixels[start : start + size]
            rng = jax.random.fold_in(jax.random.key(seed), start)
            rows.append(np.asarray(decode(self.variables, pad_rows(chunk, size), rng, temperature))[: len(chunk)])
        return np.concatenate(rows)

    def __call__(self, images: Images, **decoding: Any) -> list[str]:
        """One caption per image (decoding: as `tokens`)."""
        return [row_text(row, self.tokenizer) for row in self.tokens(images, **decoding)]

    def _decoder(self, max_new_tokens: int, top_k: int | None) -> Callable[..., jax.Array]:
        key = (max_new_tokens, top_k)
        if key not in self._compiled:
            def decode(variables: dict[str, Any], images: jax.Array, rng: jax.Array, temperature: float) -> jax.Array:
                return caption(
                    self.model, variables, images, start_id=self.tokenizer.sot_token_id,
                    max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eot_token_id, top_k=top_k,
                    temperature=temperature, rng=rng,
                )

            self._compiled[key] = jax.jit(decode)
        return self._compiled[key]


def load_captioner(path: str, *, dtype: str | None = None, batch_size: int = 64) -> Captioner:
    """A Captioner from a LiMBeR run's workdir (its newest checkpoint) or its saved weights.

    dtype: the compute dtype; None: bfloat16 on accelerators, float32 on CPU.
    Captions are at most the run's context length - 1 tokens (its metadata's "context_length").
    """
    variables, metadata = weights.load_variables(path)
    if metadata.get("kind") != "limber":
        raise ValueError(
            f"load_captioner({path!r}): a {metadata.get('kind', 'clip')!r} model, not LiMBeR's; "
            "use clip_jax.load for a CLIP"
        )
    model = weights.model_from_metadata(metadata, dtype=dtype or default_dtype())
    context_length = metadata.get("context_length", DEFAULT_CONTEXT_LENGTH)
    tokenizer = get_tokenizer(metadata.get("tokenizer", "clip"), context_length)
    preprocess = ImagePreprocess(model.visual.image_size)
    return Captioner(model, jax.device_put(variables), preprocess, tokenizer, context_length - 1, batch_size)
