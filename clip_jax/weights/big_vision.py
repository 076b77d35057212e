"""big_vision SigLIP `.npz` checkpoints as a transformers `SiglipModel`'s config and state dict.

`to_transformers(arrays)` reads the flat `/`-joined keys of a big_vision two-tower checkpoint
(`params/img/...`, `params/txt/...`, `params/t`, `params/b`; the `params/` prefix may be absent), infers
the architecture from the array shapes alone and returns what `SiglipModel(SiglipConfig(**config))`
holds for the same weights: `config` in the layout of `SiglipConfig().to_dict()` and the state dict under
SiglipModel's names and torch layouts (Linear (out, in), conv OIHW, the MAP head's q, k, v stacked in
`in_proj_weight`). Arrays are views of the inputs where the layout allows.

What was taken from google-research/big_vision (read, not copied):
- `big_vision/models/vit.py`: the image tower `img/` -- `embedding` (nn.Conv, kernel [p, p, C, D] HWIO,
  with bias), `pos_embedding` [1, N, D] ('learn' posemb, added before any class token), `Transformer/`
  holding `encoderblock_{i}` (or one `encoderblock` with a leading layer axis [depth, ...] when built with
  `scan=True`: `nn.scan(..., variable_axes={"params": 0})`) and `encoder_norm`; each block is pre-LN
  `LayerNorm_0` -> `MultiHeadDotProductAttention_0` (`query`/`key`/`value` kernel [D, H, Dh], bias
  [H, Dh]; `out` kernel [H, Dh, D], bias [D]) -> `LayerNorm_1` -> `MlpBlock_0` (`Dense_0` [D, F] ->
  `nn.gelu`, i.e. the tanh approximation -> `Dense_1` [F, D]); flax LayerNorm eps 1e-6. `MAPHead_0`
  (pool_type 'map'): `probe` [1, 1, D] attends over the tokens with the encoder's head count, then
  `x + MlpBlock_0(LayerNorm_0(x))` with the encoder's mlp_dim. Optional `pre_logits` (rep_size), `cls`
  (pool_type 'tok') and `head` (num_classes).
- `big_vision/models/proj/image_text/text_transformer.py`: the text tower `txt/` -- `Embed_0/embedding`
  [V, D], `pos_embedding` [1, L, D], vit's Encoder under its automatic name `Encoder_0` (not
  `Transformer`), pool_type 'last' (the feature at the last position: sequences are padded with EOS), then
  `head` (nn.Dense with bias) when the text out_dim is set.
- `big_vision/models/proj/image_text/two_towers.py`: towers named `img` and `txt`, each with a `head`
  Dense of out_dim unless it is None; `t` [1] is log(temperature) (the model uses exp(t)), which is
  SiglipModel's `logit_scale` (also exponentiated there); `b` [1] the sigmoid loss bias, its
  `logit_bias`. SigLIP (`configs/proj/image_text/SigLIP_demo.ipynb`, `siglip_lit_coco.py`):
  `out_dim = (None, D)`, image `pool_type='map'`, so the image embedding is the MAP head's output and
  only the text tower has a `head`.

SiglipModel has no place for an image `head` or `pre_logits` Dense, a class token, a BERT text tower
(`txt/BertEncoder_0`, LiT's proj.flaxformer.bert) or MAP text pooling: these raise ConversionError naming
the keys. A text tower without `head` (two_towers out_dim None for text, as in the released i18n
So400m/16 checkpoint) becomes an identity head, as transformers' own conversion does. The tokenizer's ids
are not in the weights: the config leaves pad/bos/eos at SiglipTextConfig's defaults (big_vision's English
SigLIPs pad with EOS = 1 and pool the last position whatever it holds).
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, NamedTuple

import numpy as np

from clip_jax.weights.torch_layout import ConversionError, raise_misfits

PREFIX = "params/"
EPS = 1e-6  # flax nn.LayerNorm's default epsilon
ACTIVATION = "gelu_pytorch_tanh"  # flax nn.gelu: approximate=True
# Parts of a big_vision two-tower model that SiglipModel has no place for: key pattern -> what and why.
_UNSUPPORTED = {
    r"img/head/.*": "an image `head` Dense (two_towers image out_dim set): SiglipModel's image embedding is "
    "the MAP head's output, with no projection after it",
    r"img/pre_logits/.*": "a `pre_logits` Dense + tanh (vit rep_size): SiglipModel's image tower has none",
    r"img/cls": "a class token (vit pool_type 'tok', as in LiT's image towers): SiglipModel's ViT has none",
    r"txt/BertEncoder_0/.*": "a BERT text tower (proj.flaxformer.bert): SiglipModel's text tower is "
    "big_vision's text_transformer",
    r"txt/MAPHead_0/.*": "MAP pooling in the text tower (text_transformer pool_type 'map'): SiglipModel's "
    "text tower takes the last token",
}
_BLOCK = re.compile(r"(.*/encoderblock)_(\d+)(/.*)")

# One state dict entry: its transformers name, the big_vision keys it is made of with their expected
# (per-layer) shapes, and the function of those arrays that gives it.
Rule = tuple[str, tuple[tuple[str, tuple[int, ...]], ...], Callable[..., np.ndarray]]


class _Encoder(NamedTuple):
    """One tower's transformer: its key prefix in big_vision and in transformers, and its sizes."""

    bv: str  # e.g. 'img/Transformer'
    hf: str  # e.g. 'vision_model.encoder.layers'
    width: int
    depth: int
    heads: int
    mlp: int


def _names(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """The arrays under their names without the `params/` prefix, and that prefix ('' when the keys lack it)."""
    prefix = PREFIX if arrays and all(k.startswith(PREFIX) for k in arrays) else ""
    return {k[len(prefix):]: v for k, v in arrays.items()}, prefix


def is_big_vision(arrays: Mapping[str, np.ndarray]) -> bool:
    """Whether `arrays` look like a big_vision two-tower checkpoint: keys under `img/` and `txt/`."""
    names, _ = _names(arrays)
    return any(k.startswith("img/") for k in names) and any(k.startswith("txt/") for k in names)


def _scanned(names: Mapping[str, np.ndarray]) -> frozenset[str]:
    """The encoder prefixes whose blocks are stored scanned: one `encoderblock` with a leading layer axis."""
    return frozenset(k.split("/encoderblock/")[0] for k in names if "/encoderblock/" in k)


def _locate(key: str, scanned: frozenset[str]) -> tuple[str, int | None]:
    """The stored key holding a per-layer key (`.../encoderblock_3/...`), and its layer index if scanned."""
    m = _BLOCK.fullmatch(key)
    if m and m.group(1).removesuffix("/encoderblock") in scanned:
        return m.group(1) + m.group(3), int(m.group(2))
    return key, None


def _recover_dtype(a: np.ndarray) -> np.ndarray:
    """bfloat16 arrays, which numpy stores as 2-byte void (big_vision's npsave), as float32."""
    if a.dtype.kind == "V" and a.dtype.itemsize == 2:
        return (a.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return a


def _get(names: Mapping[str, np.ndarray], key: str, scanned: frozenset[str], prefix: str) -> np.ndarray:
    """The array of a per-layer key (a layer's slice of a scanned block); a missing key raises ConversionError."""
    stored, layer = _locate(key, scanned)
    if stored not in names:
        raise_misfits([prefix + stored], [], [], what="big_vision checkpoint")
    a = np.asarray(names[stored])
    return a if layer is None else a[layer]


def _shape(
    names: Mapping[str, np.ndarray], key: str, ndim: int, scanned: frozenset[str], prefix: str
) -> tuple[int, ...]:
    """The per-layer shape of `key`, which must have `ndim` axes."""
    shape = _get(names, key, scanned, prefix).shape
    if len(shape) != ndim:
        stored, _ = _locate(key, scanned)
        raise ConversionError(f"big_vision key {prefix + stored} has shape {shape}: expected {ndim} axes")
    return shape


def _depth(names: Mapping[str, np.ndarray], bv: str, scanned: frozenset[str], prefix: str) -> int:
    """The number of blocks of the encoder at `bv`: a scanned block's leading axis, else 1 + the last index."""
    if bv in scanned:
        return _get(names, f"{bv}/encoderblock/LayerNorm_0/scale", frozenset(), prefix).shape[0]
    return 1 + max(int(m.group(2)) for k in names if (m := _BLOCK.fullmatch(k)) and m.group(1) == f"{bv}/encoderblock")


def _encoder(names: Mapping[str, np.ndarray], bv: str, hf: str, scanned: frozenset[str], prefix: str) -> _Encoder:
    """An encoder's sizes from its first block (which must exist): heads from the query kernel [D, H, Dh], mlp
    from Dense_0 [D, F]."""
    block = f"{bv}/encoderblock_0"
    width, heads, _ = _shape(names, f"{block}/MultiHeadDotProductAttention_0/query/kernel", 3, scanned, prefix)
    _, mlp = _shape(names, f"{block}/MlpBlock_0/Dense_0/kernel", 2, scanned, prefix)
    return _Encoder(bv, hf, width, _depth(names, bv, scanned, prefix), heads, mlp)


# Layout changes, big_vision -> torch.
def _same(a: np.ndarray) -> np.ndarray:
    return a


def _flat(a: np.ndarray) -> np.ndarray:
    """An attention bias [H, Dh] -> [H * Dh]."""
    return a.reshape(-1)


def _linear(kernel: np.ndarray) -> np.ndarray:
    """A Dense kernel [in, out] -> a torch Linear weight (out, in)."""
    return kernel.T


def _qkv(kernel: np.ndarray) -> np.ndarray:
    """A query/key/value kernel [D, H, Dh] -> a torch Linear weight (H * Dh, D), heads major."""
    return kernel.reshape(kernel.shape[0], -1).T


def _out(kernel: np.ndarray) -> np.ndarray:
    """An attention output kernel [H, Dh, D] -> a torch Linear weight (D, H * Dh)."""
    return kernel.reshape(-1, kernel.shape[-1]).T


def _conv(kernel: np.ndarray) -> np.ndarray:
    """A conv kernel HWIO [p, p, C, D] -> OIHW (D, C, p, p)."""
    return kernel.transpose(3, 2, 0, 1)


def _unbatch(a: np.ndarray) -> np.ndarray:
    """A position embedding [1, N, D] -> an nn.Embedding weight (N, D)."""
    return a[0]


def _in_proj_weight(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Three kernels [D, H, Dh] -> nn.MultiheadAttention's in_proj_weight (3 * D, D), q, k, v stacked."""
    return np.concatenate([_qkv(q), _qkv(k), _qkv(v)], axis=0)


def _in_proj_bias(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Three biases [H, Dh] -> nn.MultiheadAttention's in_proj_bias (3 * D,)."""
    return np.concatenate([_flat(q), _flat(k), _flat(v)])


def _layer_norm(bv: str, hf: str, d: int) -> list[Rule]:
    return [(f"{hf}.weight", ((f"{bv}/scale", (d,)),), _same), (f"{hf}.bias", ((f"{bv}/bias", (d,)),), _same)]


def _dense(bv: str, hf: str, d_in: int, d_out: int) -> list[Rule]:
    return [
        (f"{hf}.weight", ((f"{bv}/kernel", (d_in, d_out)),), _linear),
        (f"{hf}.bias", ((f"{bv}/bias", (d_out,)),), _same),
    ]


def _mlp(bv: str, hf: str, d: int, mlp: int) -> list[Rule]:
    return _dense(f"{bv}/Dense_0", f"{hf}.fc1", d, mlp) + _dense(f"{bv}/Dense_1", f"{hf}.fc2", mlp, d)


def _block(bv: str, hf: str, enc: _Encoder) -> list[Rule]:
    """One encoder block: `{bv}` = '.../encoderblock_{i}', `{hf}` = '....layers.{i}'."""
    d, h = enc.width, enc.heads
    attn = f"{bv}/MultiHeadDotProductAttention_0"
    rules = _layer_norm(f"{bv}/LayerNorm_0", f"{hf}.layer_norm1", d)
    for proj, name in (("k_proj", "key"), ("v_proj", "value"), ("q_proj", "query")):
        rules += [
            (f"{hf}.self_attn.{proj}.weight", ((f"{attn}/{name}/kernel", (d, h, d // h)),), _qkv),
            (f"{hf}.self_attn.{proj}.bias", ((f"{attn}/{name}/bias", (h, d // h)),), _flat),
        ]
    rules += [
        (f"{hf}.self_attn.out_proj.weight", ((f"{attn}/out/kernel", (h, d // h, d)),), _out),
        (f"{hf}.self_attn.out_proj.bias", ((f"{attn}/out/bias", (d,)),), _same),
    ]
    rules += _layer_norm(f"{bv}/LayerNorm_1", f"{hf}.layer_norm2", d)
    return rules + _mlp(f"{bv}/MlpBlock_0", f"{hf}.mlp", d, enc.mlp)


def _blocks(enc: _Encoder) -> list[Rule]:
    return [r for i in range(enc.depth) for r in _block(f"{enc.bv}/encoderblock_{i}", f"{enc.hf}.{i}", enc)]


def _text_rules(enc: _Encoder, vocab: int, context: int, projection: int, has_head: bool) -> list[Rule]:
    """text_transformer -> SiglipTextModel; without a `head`, an identity head (projection == width)."""
    d = enc.width
    if has_head:
        head = _dense("txt/head", "text_model.head", d, projection)
    else:
        head = [
            ("text_model.head.weight", (), lambda: np.eye(d, dtype=np.float32)),
            ("text_model.head.bias", (), lambda: np.zeros(d, np.float32)),
        ]
    return [
        ("text_model.embeddings.token_embedding.weight", (("txt/Embed_0/embedding", (vocab, d)),), _same),
        ("text_model.embeddings.position_embedding.weight", (("txt/pos_embedding", (1, context, d)),), _unbatch),
        *_blocks(enc),
        *_layer_norm("txt/Encoder_0/encoder_norm", "text_model.final_layer_norm", d),
        *head,
    ]


def _vision_rules(enc: _Encoder, patch: int, channels: int, positions: int) -> list[Rule]:
    """vit (MAP pooling, no head) -> SiglipVisionModel."""
    d, h = enc.width, enc.heads
    attn = "img/MAPHead_0/MultiHeadDotProductAttention_0"
    qkv_kernels = tuple((f"{attn}/{n}/kernel", (d, h, d // h)) for n in ("query", "key", "value"))
    qkv_biases = tuple((f"{attn}/{n}/bias", (h, d // h)) for n in ("query", "key", "value"))
    return [
        (
            "vision_model.embeddings.patch_embedding.weight",
            (("img/embedding/kernel", (patch, patch, channels, d)),),
            _conv,
        ),
        ("vision_model.embeddings.patch_embedding.bias", (("img/embedding/bias", (d,)),), _same),
        ("vision_model.embeddings.position_embedding.weight", (("img/pos_embedding", (1, positions, d)),), _unbatch),
        *_blocks(enc),
        *_layer_norm("img/Transformer/encoder_norm", "vision_model.post_layernorm", d),
        ("vision_model.head.probe", (("img/MAPHead_0/probe", (1, 1, d)),), _same),
        ("vision_model.head.attention.in_proj_weight", qkv_kernels, _in_proj_weight),
        ("vision_model.head.attention.in_proj_bias", qkv_biases, _in_proj_bias),
        ("vision_model.head.attention.out_proj.weight", ((f"{attn}/out/kernel", (h, d // h, d)),), _out),
        ("vision_model.head.attention.out_proj.bias", ((f"{attn}/out/bias", (d,)),), _same),
        *_layer_norm("img/MAPHead_0/LayerNorm_0", "vision_model.head.layernorm", d),
        *_mlp("img/MAPHead_0/MlpBlock_0", "vision_model.head.mlp", d, enc.mlp),
    ]


def _check_parts(names: Mapping[str, np.ndarray], prefix: str) -> None:
    """Raises ConversionError naming the keys of a part SiglipModel has no place for, or its missing MAP head."""
    for pattern, why in _UNSUPPORTED.items():
        if keys := sorted(prefix + k for k in names if re.fullmatch(pattern, k)):
            raise ConversionError(f"big_vision keys {keys} hold {why}")
    if not any(k.startswith("img/MAPHead_0/") for k in names):
        raise ConversionError(
            f"big_vision checkpoint has no {prefix}img/MAPHead_0/*: the image tower does not pool with a MAP "
            "head (vit pool_type 'gap' or '0'), and SiglipModel's image embedding is a MAP head's output"
        )


def _check_keys(names: Mapping[str, np.ndarray], rules: list[Rule], depths: Mapping[str, int],
                scanned: frozenset[str], prefix: str) -> None:
    """Raises ConversionError listing every missing, unexpected and mis-shaped stored key.

    depths: encoder prefix -> its number of blocks, the leading axis of its scanned arrays."""
    expected: dict[str, tuple[int, ...]] = {}
    for _, sources, _ in rules:
        for key, shape in sources:
            stored, layer = _locate(key, scanned)
            expected[stored] = shape if layer is None else (depths[stored.split("/encoderblock/")[0]], *shape)
    missing = [prefix + k for k in expected if k not in names]
    unexpected = [prefix + k for k in names if k not in expected]
    errors = [
        f"{prefix + k}: shape {np.shape(names[k])}, expected {shape}"
        for k, shape in expected.items()
        if k in names and np.shape(names[k]) != shape
    ]
    raise_misfits(missing, unexpected, errors, what="big_vision checkpoint")


def _config(text: _Encoder, vision: _Encoder, vocab: int, context: int, projection: int, patch: int,
            channels: int, image_size: int) -> dict:
    """The architecture in the layout of `SiglipConfig().to_dict()` (the keys it sets; the rest stay defaults)."""
    def tower(enc: _Encoder) -> dict:
        return dict(
            hidden_size=enc.width, intermediate_size=enc.mlp, num_hidden_layers=enc.depth,
            num_attention_heads=enc.heads, hidden_act=ACTIVATION, layer_norm_eps=EPS,
        )

    return dict(
        model_type="siglip",
        text_config=dict(
            model_type="siglip_text_model", **tower(text), vocab_size=vocab, max_position_embeddings=context,
            projection_size=projection,
        ),
        vision_config=dict(
            model_type="siglip_vision_model", **tower(vision), num_channels=channels, image_size=image_size,
            patch_size=patch, vision_use_head=True,
        ),
    )


def to_transformers(arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """A big_vision SigLIP checkpoint -> (config, state dict) of the transformers SiglipModel holding it.

    arrays: the checkpoint's flat keys (`params/img/embedding/kernel`, ...; prefix optional), blocks per
    layer (`encoderblock_{i}`) or scanned (`encoderblock`, layer axis first), e.g. `dict(np.load(path))`.
    Raises ConversionError naming every missing, unexpected or mis-shaped key, or the part SiglipModel has
    no place for.
    """
    names, prefix = _names(arrays)
    _check_parts(names, prefix)
    scanned = _scanned(names)

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        return _shape(names, key, ndim, scanned, prefix)

    text = _encoder(names, "txt/Encoder_0", "text_model.encoder.layers", scanned, prefix)
    vision = _encoder(names, "img/Transformer", "vision_model.encoder.layers", scanned, prefix)
    vocab, _ = shape("txt/Embed_0/embedding", 2)
    _, context, _ = shape("txt/pos_embedding", 3)
    has_head = any(k.startswith("txt/head/") for k in names)
    projection = shape("txt/head/kernel", 2)[1] if has_head else text.width
    patch, _, channels, _ = shape("img/embedding/kernel", 4)
    _, positions, _ = shape("img/pos_embedding", 3)
    grid = round(positions**0.5)
    if grid * grid != positions:
        raise ConversionError(f"big_vision key {prefix}img/pos_embedding has {positions} positions: not a square grid")

    rules = [
        ("logit_scale", (("t", (1,)),), _same),
        ("logit_bias", (("b", (1,)),), _same),
        *_text_rules(text, vocab, context, projection, has_head),
        *_vision_rules(vision, patch, channels, positions),
    ]
    _check_keys(names, rules, {enc.bv: enc.depth for enc in (text, vision)}, scanned, prefix)
    state = {
        hf: fn(*(_recover_dtype(_get(names, key, scanned, prefix)) for key, _ in sources)) for hf, sources, fn in rules
    }
    config = _config(text, vision, vocab, context, projection, patch, channels, grid * patch)
    return config, state
