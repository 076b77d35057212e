"""Tokenizers: texts -> int32 [N, context_length] numpy arrays.

    get_tokenizer("clip", 77)                          # OpenAI CLIP BPE
    get_tokenizer("sentencepiece:/path/spm.model", 64)  # a trained SentencePiece model
    get_tokenizer("gpt2:/path/gpt2", 64)               # GPT-2 / GPT-J BPE: a dir with vocab.json, merges.txt
    get_tokenizer("hf:/path/siglip", 64)               # a transformers CLIPModel / SiglipModel directory

Rows are padded with 0, except "hf:" ones, which hold exactly the ids of
transformers' AutoTokenizer(texts, padding="max_length", truncation=True) and so
are padded with the directory's pad id (SigLIP: "</s>" = 1). An "hf:" directory
whose vocabulary is CLIP's own BPE gives ClipTokenizer, which pads with 0 where
transformers pads with 49407 (see clip_jax.tokenizers.pretrained_dir).
"""
from __future__ import annotations

from clip_jax.tokenizers.clip_bpe import ClipTokenizer
from clip_jax.tokenizers.gpt2_bpe import Gpt2Tokenizer
from clip_jax.tokenizers.pretrained_dir import (
    HfFastTokenizer,
    HfSiglipTokenizer,
    copy_tokenizer_files,
    directory_of_spec,
    load_pretrained_tokenizer,
    pretrained_tokenizer_spec,
    write_clip_tokenizer_files,
)
from clip_jax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from clip_jax.tokenizers.sentencepiece_trainer import train_sentencepiece

__all__ = [
    "ClipTokenizer",
    "Gpt2Tokenizer",
    "HfFastTokenizer",
    "HfSiglipTokenizer",
    "SentencePieceTokenizer",
    "copy_tokenizer_files",
    "get_tokenizer",
    "load_pretrained_tokenizer",
    "pretrained_tokenizer_spec",
    "train_sentencepiece",
    "write_clip_tokenizer_files",
]

_SENTENCEPIECE_PREFIX = "sentencepiece:"
_GPT2_PREFIX = "gpt2:"


def get_tokenizer(
    spec: str, context_length: int
) -> ClipTokenizer | SentencePieceTokenizer | Gpt2Tokenizer | HfSiglipTokenizer | HfFastTokenizer:
    """Builds a tokenizer from a spec string: "clip", "sentencepiece:PATH", "gpt2:DIRECTORY" or "hf:DIRECTORY"."""
    if spec == "clip":
        return ClipTokenizer(context_length)
    if spec.startswith(_SENTENCEPIECE_PREFIX) and len(spec) > len(_SENTENCEPIECE_PREFIX):
        return SentencePieceTokenizer(spec[len(_SENTENCEPIECE_PREFIX) :], context_length)
    if spec.startswith(_GPT2_PREFIX) and len(spec) > len(_GPT2_PREFIX):
        return Gpt2Tokenizer(spec[len(_GPT2_PREFIX) :], context_length)
    if (directory := directory_of_spec(spec)) is not None:
        return load_pretrained_tokenizer(directory, context_length)
    raise ValueError(
        f"Unknown tokenizer spec {spec!r}: expected 'clip', 'sentencepiece:/path/to/model', "
        "'gpt2:/dir/with/vocab.json+merges.txt' or 'hf:/transformers/model/dir'"
    )
