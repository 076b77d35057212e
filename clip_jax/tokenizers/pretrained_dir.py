"""The tokenizer of a transformers CLIPModel / SiglipModel directory ("hf:DIR"), id for id.

    tokenizer = load_pretrained_tokenizer("/path/to/siglip", 64)
    tokenizer(texts)  # int32 [N, 64]: transformers.AutoTokenizer.from_pretrained(DIR)(texts,
                      #   padding="max_length", max_length=64, truncation=True)["input_ids"]

A directory is read as the first of these that fits it:

  clip: its vocabulary (vocab.json, else tokenizer.json's) is CLIP's own
    49,408-symbol BPE: `ClipTokenizer`, the spec "clip". Its rows differ from
    transformers' CLIPTokenizer in two known ways. Padding: 0, where
    transformers pads with the directory's pad token (49407, <|endoftext|>, in
    OpenAI's directories); CLIP's causal text tower pools at the first EOT
    (argmax), which padding after it cannot change, so the embeddings agree.
    Cleaning: open_clip's (ftfy, HTML unescape, whitespace, lowercase), where
    transformers applies NFC, whitespace and lowercase only, so texts with HTML
    entities ("&amp;"), curly quotes, ligatures or full-width forms may differ;
    so do texts that spell a special token: transformers reads "<|endoftext|>"
    as EOT, open_clip and clip_jax "<end_of_text>".
  sentencepiece: spiece.model, read as transformers' SiglipTokenizer reads it
    (the file when tokenizer_config.json names SiglipTokenizer or there is no
    tokenizer.json): `HfSiglipTokenizer`.
  tokenizer.json: a tokenizers-library pipeline, as transformers' fast
    tokenizers run it: `HfFastTokenizer`.

Unlike clip_jax's other tokenizers, the last two pad with the directory's pad
token (tokenizer_config.json's, else special_tokens_map.json's), not 0:
SigLIP's is "</s>", id 1, which is also its EOS.
"""
from __future__ import annotations

import functools
import json
import re
import string
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import sentencepiece as spm
import tokenizers
from etils import epath

from clip_jax.tokenizers.clip_bpe import EOT, SOT, ClipTokenizer, _load_vocab

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "vocab.json",
    "merges.txt",
)
HF_SOT, HF_EOT = "<|startoftext|>", "<|endoftext|>"  # transformers' names of CLIP's two special tokens
SPEC_PREFIX = "hf:"  # get_tokenizer's spec of a transformers directory's tokenizer
SPIECE_UNDERLINE = "▁"
# SiglipTokenizer's named special tokens and their defaults; other named ones come from the config alone.
SIGLIP_DEFAULTS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>"}
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: epath.Path) -> Any:
    """The JSON value in `path`, or a ValueError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None


def read_tokenizer_config(directory: str) -> dict[str, Any]:
    """tokenizer_config.json ({} if absent), with special_tokens_map.json's entries over it when the config
    has no "added_tokens_decoder" (transformers reads the map only then)."""
    root = epath.Path(directory)
    config = _read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
    if "added_tokens_decoder" not in config and (root / "special_tokens_map.json").is_file():
        config.update(_read_json(root / "special_tokens_map.json"))
    return config


def _token_text(value: str | dict[str, Any] | None) -> str | None:
    """A special token's text, saved either as a string or as an AddedToken dict {"content": ...}."""
    return value["content"] if isinstance(value, dict) else value


@functools.cache
def clip_vocab() -> dict[str, int]:
    """CLIP's BPE vocabulary under transformers' names: 256 byte symbols, the same with "</w>", one symbol per
    merge in merge order, then <|startoftext|> = 49406 and <|endoftext|> = 49407."""
    rename = {SOT: HF_SOT, EOT: HF_EOT}
    return {rename.get(symbol, symbol): i for symbol, i in _load_vocab().encoder.items()}


def _vocabulary(root: epath.Path) -> dict[str, int] | None:
    """The directory's symbol -> id table: vocab.json, else a BPE tokenizer.json's; None if neither."""
    if (root / "vocab.json").is_file():
        return _read_json(root / "vocab.json")
    if (root / "tokenizer.json").is_file():
        model = _read_json(root / "tokenizer.json").get("model", {})
        return model.get("vocab") if model.get("type") == "BPE" else None
    return None


def _missing_files_error(directory: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{directory!r} holds no tokenizer: looked for tokenizer.json, spiece.model, and vocab.json "
        "(with merges.txt) holding CLIP's BPE vocabulary"
    )


def pretrained_tokenizer_kind(directory: str) -> str:
    """How "hf:DIRECTORY" is read: "clip", "sentencepiece" or "tokenizer.json" (see the module docstring)."""
    root = epath.Path(directory)
    vocab = _vocabulary(root)
    if vocab is not None and len(vocab) == ClipTokenizer.vocab_size and vocab == clip_vocab():
        return "clip"
    has_json, has_spiece = (root / "tokenizer.json").is_file(), (root / "spiece.model").is_file()
    if has_spiece and (not has_json or read_tokenizer_config(directory).get("tokenizer_class") == "SiglipTokenizer"):
        return "sentencepiece"
    if has_json:
        return "tokenizer.json"
    raise _missing_files_error(directory)


def pretrained_tokenizer_spec(directory: str) -> str:
    """The tokenizer spec of a transformers directory: "clip" for CLIP's own BPE, else "hf:DIRECTORY"."""
    return "clip" if pretrained_tokenizer_kind(directory) == "clip" else f"{SPEC_PREFIX}{directory}"


def directory_of_spec(spec: str | None) -> str | None:
    """DIRECTORY of an "hf:DIRECTORY" tokenizer spec; None for any other spec."""
    if spec and spec.startswith(SPEC_PREFIX) and len(spec) > len(SPEC_PREFIX):
        return spec[len(SPEC_PREFIX) :]
    return None


def _directory_with(directory: str, name: str, context_length: int) -> epath.Path:
    """The directory, checked to hold the file `name`, for a tokenizer of a positive context length."""
    if context_length < 1:
        raise ValueError(f"context_length must be positive, got {context_length}")
    root = epath.Path(directory)
    if not (root / name).is_file():
        raise FileNotFoundError(f"{name} not found in {directory!r}")
    return root


def _pad_token(config: dict[str, Any], directory: str) -> str:
    """The text of the directory's pad token, or a ValueError: without one transformers cannot pad either."""
    pad = _token_text(config.get("pad_token"))
    if pad is None:
        raise ValueError(
            f"{directory!r}: no pad_token in tokenizer_config.json or special_tokens_map.json, "
            "so transformers cannot pad its texts to max_length"
        )
    return pad


class HfFastTokenizer:
    """Texts -> int32 [N, context_length] with a tokenizer.json, as transformers' fast tokenizers frame them.

    Each row is the tokenizer.json pipeline's ids framed by its post-processor
    (e.g. BOS, ids, EOS), then the pad id. A long text is cut before framing,
    so the post-processor's tokens (EOS) stay. Truncation and padding sides
    come from tokenizer_config.json ("truncation_side", "padding_side";
    "right" by default); truncation or padding saved in tokenizer.json is
    replaced, as transformers replaces it. The post-processor is taken as
    saved: transformers rebuilds it only when tokenizer_config.json sets
    add_bos_token / add_eos_token, which save_pretrained writes consistently.
    """

    def __init__(self, directory: str, context_length: int):
        """directory: holds tokenizer.json (and tokenizer_config.json), local or in a bucket (gs://...)."""
        root = _directory_with(directory, "tokenizer.json", context_length)
        saved = (root / "tokenizer.json").read_text(encoding="utf-8")
        config = read_tokenizer_config(directory)
        pad_token = _pad_token(config, directory)
        self._plain = tokenizers.Tokenizer.from_str(saved)
        self._plain.no_truncation()
        self._plain.no_padding()
        pad_id = self._plain.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{directory!r}: pad token {pad_token!r} is not in tokenizer.json's vocabulary")
        self._framed = tokenizers.Tokenizer.from_str(saved)
        self._framed.enable_truncation(
            context_length, stride=0, strategy="longest_first", direction=config.get("truncation_side", "right")
        )
        self._framed.enable_padding(
            direction=config.get("padding_side", "right"),
            pad_id=pad_id,
            pad_type_id=config.get("pad_token_type_id", 0),
            pad_token=pad_token,
            length=context_length,
        )
        self.directory = directory
        self.context_length = context_length
        self.pad_id = pad_id
        self.vocab_size = self._plain.get_vocab_size(with_added_tokens=True)
        # ids that frame a text rather than say something: padding and what the post-processor adds
        self.special_ids = tuple(sorted({pad_id, *self._plain.encode("").ids}))

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without the post-processor's tokens or padding."""
        return self._plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` by tokenizer.json's decoder; special tokens and padding decode too: strip them first."""
        return self._plain.decode([int(i) for i in ids], skip_special_tokens=False)

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes a text or a batch of texts: int32 [N, context_length]."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [encoding.ids for encoding in self._framed.encode_batch(list(texts))]
        return np.asarray(rows, np.int32).reshape(len(rows), self.context_length)


class _AddedToken(NamedTuple):
    id: int
    lstrip: bool  # strips the whitespace on its left from the text before it
    rstrip: bool  # strips the whitespace on its right from the text after it


def _added_tokens(
    config: dict[str, Any], special: set[str], sp: spm.SentencePieceProcessor, directory: str
) -> dict[str, _AddedToken]:
    """Text -> added token: tokenizer_config.json's added_tokens_decoder, plus the special tokens it lacks,
    at their SentencePiece id and stripping both sides (SiglipTokenizer's own AddedToken settings)."""
    added = {
        entry["content"]: _AddedToken(int(i), entry.get("lstrip", False), entry.get("rstrip", False))
        for i, entry in config.get("added_tokens_decoder", {}).items()
    }
    for text in sorted(special - set(added)):
        if sp.id_to_piece(sp.piece_to_id(text)) != text:
            raise ValueError(f"{directory!r}: special token {text!r} is neither an added token nor in spiece.model")
        added[text] = _AddedToken(sp.piece_to_id(text), True, True)
    return added


def canonicalize_text(text: str, lowercase: bool) -> str:
    """SigLIP's (big_vision's) text canonicalization: lowercase, drop ASCII punctuation, collapse whitespace."""
    if lowercase:
        text = text.lower()
    text = text.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


class HfSiglipTokenizer:
    """Texts -> int32 [N, context_length] with a spiece.model, as transformers' SiglipTokenizer (5.x).

    Per text: "▁" is prepended ("▁" inside the text becomes a space); the
    text is split at its special and added tokens (which keep their ids; an
    added token's lstrip / rstrip strips the whitespace beside it); each piece
    between them is canonicalized (`canonicalize_text`: lowercase when
    do_lower_case, which is the default, ASCII punctuation removed, whitespace
    collapsed and stripped) and encoded by SentencePiece behind the unk
    token's text, whose pieces are then dropped; a leading "▁" piece before a
    special token is dropped. A long text is cut to context_length - 1 ids,
    then EOS is appended unless the ids already end with it; rows are padded
    with the pad token (SigLIP: "</s>" = EOS = 1). Truncation and padding
    sides come from tokenizer_config.json ("right" by default).
    """

    def __init__(self, directory: str, context_length: int):
        """directory: holds spiece.model (and tokenizer_config.json), local or in a bucket (gs://...)."""
        root = _directory_with(directory, "spiece.model", context_length)
        config = read_tokenizer_config(directory)
        if config.get("legacy", True) is False:
            raise ValueError(f"{directory!r}: tokenizer_config.json sets legacy=false, which clip_jax does not read")
        self._sp = spm.SentencePieceProcessor(model_proto=(root / "spiece.model").read_bytes())
        named = {
            name: text
            for name in NAMED_TOKENS
            if (text := _token_text(config.get(name)) or SIGLIP_DEFAULTS.get(name)) is not None
        }
        extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        extra = extra.values() if isinstance(extra, dict) else extra  # a dict: model-specific named tokens
        self._special = {*named.values(), *map(_token_text, extra)}
        self._added = _added_tokens(config, self._special, self._sp, directory)
        alternatives = sorted({*self._special, *self._added}, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self._lowercase = config.get("do_lower_case", True)
        self._unk = named["unk_token"]
        self._unk_pieces = len(self._sp.encode(self._unk, out_type=str))
        self._truncation_side = config.get("truncation_side", "right")
        self._padding_side = config.get("padding_side", "right")
        self.directory = directory
        self.context_length = context_length
        self.eos_id = self._token_id(named["eos_token"])
        self.pad_id = self._token_id(named["pad_token"])
        self.vocab_size = max([self._sp.vocab_size(), *(t.id + 1 for t in self._added.values())])
        self.special_ids = tuple(sorted({self.pad_id, self.eos_id}))  # ids that frame a text

    def _token_id(self, piece: str) -> int:
        """A token's id as transformers converts it: added tokens first, then SentencePiece (unk if unknown)."""
        return self._added[piece].id if piece in self._added else self._sp.piece_to_id(piece)

    def _sentencepiece(self, text: str) -> list[str]:
        """SiglipTokenizer._tokenize: pieces of the canonicalized text, encoded after the unk token's text."""
        pieces = self._sp.encode(self._unk + canonicalize_text(text, self._lowercase), out_type=str)
        return pieces[self._unk_pieces :] if len(pieces) >= self._unk_pieces else pieces

    def tokenize(self, text: str) -> list[str]:
        """SiglipTokenizer.tokenize: the text's pieces and special tokens, as strings."""
        chunks = self._split.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        for i, chunk in enumerate(chunks):
            if i % 2 and chunk in self._added:  # odd chunks are the split's matches
                if self._added[chunk].rstrip and i + 1 < len(chunks):
                    chunks[i + 1] = chunks[i + 1].lstrip()
                if self._added[chunk].lstrip:
                    chunks[i - 1] = chunks[i - 1].rstrip()
        pieces = []
        for i, chunk in enumerate(chunks):
            if chunk:
                pieces.extend([chunk] if i % 2 else self._sentencepiece(chunk))
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self._special:
            pieces = pieces[1:]
        return pieces

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without EOS or padding."""
        return [self._token_id(piece) for piece in self.tokenize(text)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` by SentencePiece; pad, EOS and other control ids decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def _row(self, ids: list[int]) -> list[int]:
        """One row: ids cut to leave room for EOS, EOS unless already last, padding to context_length."""
        excess = len(ids) + 1 - self.context_length
        if excess > 0:
            ids = ids[excess:] if self._truncation_side == "left" else ids[:-excess]
        if not ids or ids[-1] != self.eos_id:
            ids = [*ids, self.eos_id]
        padding = [self.pad_id] * (self.context_length - len(ids))
        return padding + ids if self._padding_side == "left" else ids + padding

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes a text or a batch of texts: int32 [N, context_length]."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self._row(self.encode(text)) for text in texts]
        return np.asarray(rows, np.int32).reshape(len(rows), self.context_length)


def load_pretrained_tokenizer(
    directory: str, context_length: int
) -> ClipTokenizer | HfSiglipTokenizer | HfFastTokenizer:
    """The tokenizer of a transformers model directory ("hf:DIRECTORY"); see the module docstring."""
    kind = pretrained_tokenizer_kind(directory)
    if kind == "clip":
        return ClipTokenizer(context_length)
    if kind == "sentencepiece":
        return HfSiglipTokenizer(directory, context_length)
    return HfFastTokenizer(directory, context_length)


def write_clip_tokenizer_files(directory: str, context_length: int) -> list[str]:
    """Writes the files transformers' CLIPTokenizer.from_pretrained(directory) reads for CLIP's BPE.

    vocab.json (`clip_vocab`), merges.txt ("#version: 0.2", then CLIP's 48,894
    merges), tokenizer_config.json and special_tokens_map.json (OpenAI's
    settings: BOS <|startoftext|>, EOS = UNK = PAD = <|endoftext|>,
    model_max_length = context_length). Returns the paths written.
    """
    root = epath.Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    special = {"bos_token": HF_SOT, "eos_token": HF_EOT, "unk_token": HF_EOT, "pad_token": HF_EOT}
    flags = dict(lstrip=False, normalized=True, rstrip=False, single_word=False, special=True)
    added = {str(clip_vocab()[text]): dict(content=text, **flags) for text in (HF_SOT, HF_EOT)}
    config = dict(
        tokenizer_class="CLIPTokenizer",
        model_max_length=context_length,
        do_lower_case=True,
        errors="replace",
        added_tokens_decoder=added,
        **special,
    )
    contents = {
        "vocab.json": json.dumps(clip_vocab(), ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _load_vocab().ranks),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False) + "\n",
        "special_tokens_map.json": json.dumps(special, indent=2) + "\n",
    }
    for name, text in contents.items():
        (root / name).write_text(text, encoding="utf-8")
    return [str(root / name) for name in contents]


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
    """Copies the tokenizer files of a transformers directory (those of TOKENIZER_FILES it holds) into
    dst_dir, which is created if missing; returns the names copied. A directory with no tokenizer
    (`pretrained_tokenizer_kind`) raises FileNotFoundError."""
    pretrained_tokenizer_kind(src_dir)
    src, dst = epath.Path(src_dir), epath.Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    names = [name for name in TOKENIZER_FILES if (src / name).is_file()]
    for name in names:
        (src / name).copy(dst / name, overwrite=True)
    return names
