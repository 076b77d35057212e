"""Using a trained model: load it, embed images and texts, classify zero-shot.

    clip = clip_jax.load("runs/vit_b32")             # a run's workdir, imported weights, a .pt, or a model name
    clip = clip_jax.load("siglip-base-patch16-224")  # a transformers CLIPModel / SiglipModel directory
    clip = clip_jax.load("webli_en_b16_224.npz")     # a big_vision SigLIP checkpoint
    classify = clip.zero_shot_classifier(["a cat", "a dog"], templates="simple")
    probs = classify([PIL.Image.open("cat.jpg")])    # [1, 2]

`load` returns a `Pretrained`, which also unpacks as open_clip's triple:

    model, variables, preprocess = clip_jax.load("runs/vit_b32")

Encoders are jitted once per batch shape: inputs go through in batches of a
power of two up to `batch_size` (the last one padded), so a stream of calls of
any sizes compiles a handful of programs. On accelerators the towers compute in
bfloat16 (parameters stay float32); on CPU in float32.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.evaluation.batching import BatchedEncoder
from clip_jax.evaluation.templates import get_templates
from clip_jax.evaluation.zeroshot import zeroshot_classifier
from clip_jax.inference.images import ImageLike, ImagePreprocess
from clip_jax.models import CLIP, create_model, l2_normalize, list_models
from clip_jax.runtime import paths
from clip_jax.tokenizers import get_tokenizer
from clip_jax.weights import storage as weights
from clip_jax.weights.open_clip import from_torch_state_dict, is_openai_state_dict
from clip_jax.weights.sources import read_weights
from clip_jax.weights.torch_layout import in_layout_of

log = logging.getLogger("clip_jax.inference.pretrained")

Images = np.ndarray | Sequence[ImageLike]
Texts = Sequence[str] | np.ndarray
_TORCH_FILES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A model with its variables, its image preprocessing and its tokenizer.

    Unpacks as (model, variables, preprocess). Images given to the encoders
    are either preprocessed already (float32 [N, S, S, 3]) or a list of PIL
    images / uint8 arrays, preprocessed here.
    """

    model: CLIP
    variables: dict[str, Any]
    preprocess: ImagePreprocess
    tokenizer: Callable[[list[str]], np.ndarray] | None
    batch_size: int = 256
    _towers: dict[str, Callable[..., jax.Array]] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        def tower(method: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
            return jax.jit(lambda variables, x: self.model.apply(variables, x, method=method).astype(jnp.float32))

        towers = {"image": tower(self.model.encode_image), "text": tower(self.model.encode_text)}
        object.__setattr__(self, "_towers", towers)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.variables, self.preprocess))

    def encode_image(self, images: Images, normalize: bool = False) -> np.ndarray:
        """Images -> float32 [N, E] (L2-normalized when `normalize`)."""
        if not isinstance(images, np.ndarray):
            images = self.preprocess.batch(images)
        return self._encode("image", images, normalize)

    def encode_text(self, texts: Texts, normalize: bool = False) -> np.ndarray:
        """Strings (or int32 tokens [N, L]) -> float32 [N, E] (L2-normalized when `normalize`)."""
        tokens = texts if isinstance(texts, np.ndarray) else self._tokenize(list(texts))
        vocab_size = self.model.text.vocab_size
        if tokens.size and tokens.max() >= vocab_size:
            raise ValueError(
                f"token id {tokens.max()} is beyond the model's vocabulary of {vocab_size}: "
                "the texts need the tokenizer the model was trained with"
            )
        return self._encode("text", tokens, normalize)

    def zero_shot_classifier(
        self, classnames: Sequence[str], templates: str | Sequence[str] = "openai_imagenet"
    ) -> Callable[[Images], np.ndarray]:
        """A classifier of images into `classnames`: images -> probabilities float32 [N, C].

        The class embeddings average the prompts of every template (a set name
        or a list of strings with one "{}"), as OpenAI's notebook does. The
        probabilities are the model's: softmax over classes of scale * cosine,
        or for a model with a logit bias (SigLIP) sigmoid(scale * cosine + bias)
        per class.
        """
        classes = zeroshot_classifier(
            lambda tokens: self._encode("text", tokens, False),
            self._tokenize,
            list(classnames),
            get_templates(templates),
            batch_size=self.batch_size,
        )
        params = self.variables["params"]
        scale = float(jnp.exp(params["logit_scale"]))
        bias = float(params["logit_bias"]) if "logit_bias" in params else None

        def classify(images: Images) -> np.ndarray:
            logits = scale * (self.encode_image(images, normalize=True) @ np.asarray(classes).T)
            if bias is not None:
                return np.asarray(jax.nn.sigmoid(logits + bias))
            return np.asarray(jax.nn.softmax(logits, axis=-1))

        return classify

    def _tokenize(self, texts: list[str]) -> np.ndarray:
        if self.tokenizer is None:
            raise ValueError(
                "these weights come without a tokenizer (a big_vision .npz has none): give token ids [N, L] "
                "or load(..., tokenizer=SPEC), e.g. 'sentencepiece:/path/spm.model' or 'hf:/path/to/model_dir'"
            )
        return self.tokenizer(texts)

    def _encode(self, tower: str, rows: np.ndarray, normalize: bool) -> np.ndarray:
        """rows [N, ...] through one tower in batches of a power of two <= batch_size -> float32 [N, E]."""
        if not len(rows):
            raise ValueError("Nothing to encode: got 0 rows")
        size = min(self.batch_size, 1 << (len(rows) - 1).bit_length())
        encoder = BatchedEncoder(lambda batch: self._towers[tower](self.variables, batch), size)
        encoder.add(rows)
        embeds = encoder.result()
        return np.asarray(l2_normalize(jnp.asarray(embeds))) if normalize else embeds


def default_dtype() -> str:
    """bfloat16 on accelerators, float32 on CPU: the compute dtype `load` gives models."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def load(
    name_or_path: str,
    *,
    model: str | None = None,
    dtype: str | None = None,
    batch_size: int = 256,
    seed: int = 0,
    tokenizer: str | None = None,
    **overrides: Any,
) -> Pretrained:
    """A model ready for inference, from wherever its weights are.

    name_or_path, model, seed and overrides: as `load_weights`.
    dtype: the towers' compute dtype; None: `default_dtype()`.
    batch_size: the largest batch an encoder runs at once.
    tokenizer: a `get_tokenizer` spec; None: the one the weights name (CLIP's BPE where they name none;
      a big_vision .npz has none: texts then need this, or come as token ids).
    """
    clip_model, variables, metadata = load_weights(
        name_or_path, model=model, seed=seed, dtype=dtype or default_dtype(), **overrides
    )
    if not isinstance(clip_model, CLIP):
        kind = metadata.get("kind")
        hint = "clip_jax.load_captioner captions images with it" if kind == "limber" else "it has no image tower"
        raise ValueError(f"load({name_or_path!r}): a {kind!r} model, not a CLIP; {hint}")
    spec = tokenizer or metadata.get("tokenizer", "clip")
    texts = None if spec is None else get_tokenizer(spec, clip_model.text.context_length)
    preprocess = ImagePreprocess(clip_model.visual.image_size)
    return Pretrained(clip_model, jax.device_put(variables), preprocess, texts, batch_size)


def load_weights(
    name_or_path: str, *, model: str | None = None, seed: int = 0, **overrides: Any
) -> tuple[CLIP, dict[str, Any], dict[str, Any]]:
    """(model, variables as host arrays, metadata) from wherever the weights are.

    name_or_path:
      a training run's workdir (its newest checkpoint) or a weights directory
        (`python -m clip_jax.import_weights`): the model rebuilds itself from
        the checkpoint's metadata ("model", "overrides", "tokenizer");
      a transformers CLIPModel / SiglipModel `save_pretrained` directory or a
        big_vision SigLIP .npz: converted on the fly, the model built from its
        config.json or its arrays' shapes (`weights.sources`);
      a PyTorch/open_clip checkpoint file (.pt, .bin, .safetensors, .npz):
        converted on the fly; `model` names the clip_jax model it holds;
      a model name (clip_jax.list_models()): random weights from `seed`,
        for trying the API out.
    overrides: create_model overrides on top of the saved ones.
    """
    if paths.resolve(name_or_path).is_dir() or (name_or_path.endswith(".npz") and model is None):
        variables, metadata = read_weights(name_or_path)
        clip_model = weights.model_from_metadata(metadata, **overrides)
        if isinstance(clip_model, CLIP):  # overrides may ask for the other layer layout (scan_layers)
            variables = in_layout_of(variables, clip_model)
        return clip_model, variables, metadata
    if name_or_path.endswith(_TORCH_FILES):
        if model is None:
            raise ValueError(f"load({name_or_path!r}): a PyTorch checkpoint file needs model=NAME (e.g. 'ViT-B-32')")
        from clip_jax.import_weights import read_state_dict  # reads torch's formats; torch only for .pt/.bin

        state_dict = read_state_dict(name_or_path)
        clip_model = create_model(model, **overrides)
        origin = "openai" if is_openai_state_dict(state_dict) else None
        variables = from_torch_state_dict(state_dict, clip_model, origin=origin)
        return clip_model, variables, {"model": model, "overrides": overrides, "source": name_or_path}
    if "/" in name_or_path and name_or_path not in list_models():  # a path, or a hub id such as org/name
        raise FileNotFoundError(
            f"load({name_or_path!r}): no such file or directory; clip_jax reads weights from disk or a bucket "
            f"and downloads nothing (a hub model: `huggingface-cli download {name_or_path} --local-dir DIR`, "
            "then load(DIR))"
        )
    clip_model = create_model(name_or_path, **overrides)  # a ValueError names the known models
    log.warning("load(%r): a model name, so random weights (seed %d)", name_or_path, seed)
    return clip_model, _random_variables(clip_model, seed), {"model": name_or_path, "overrides": overrides}


def _random_variables(model: CLIP, seed: int) -> dict[str, Any]:
    size = model.visual.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    tokens = jnp.zeros((1, model.text.context_length), jnp.int32)
    return nn.meta.unbox(jax.jit(model.init)(jax.random.key(seed), images, tokens))
