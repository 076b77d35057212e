"""Tokenizers: texts -> int32 [N, context_length] numpy arrays, padded with 0.

    get_tokenizer("clip", 77)                          # OpenAI CLIP BPE
    get_tokenizer("sentencepiece:/path/spm.model", 64)  # a trained SentencePiece model
    get_tokenizer("gpt2:/path/gpt2", 64)               # GPT-2 / GPT-J BPE: a dir with vocab.json, merges.txt
"""
from __future__ import annotations

from clip_jax.tokenizers.clip_bpe import ClipTokenizer
from clip_jax.tokenizers.gpt2_bpe import Gpt2Tokenizer
from clip_jax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from clip_jax.tokenizers.sentencepiece_trainer import train_sentencepiece

__all__ = ["ClipTokenizer", "Gpt2Tokenizer", "SentencePieceTokenizer", "get_tokenizer", "train_sentencepiece"]

_SENTENCEPIECE_PREFIX = "sentencepiece:"
_GPT2_PREFIX = "gpt2:"


def get_tokenizer(spec: str, context_length: int) -> ClipTokenizer | SentencePieceTokenizer | Gpt2Tokenizer:
    """Builds a tokenizer from a spec string: "clip", "sentencepiece:PATH" or "gpt2:DIRECTORY"."""
    if spec == "clip":
        return ClipTokenizer(context_length)
    if spec.startswith(_SENTENCEPIECE_PREFIX) and len(spec) > len(_SENTENCEPIECE_PREFIX):
        return SentencePieceTokenizer(spec[len(_SENTENCEPIECE_PREFIX) :], context_length)
    if spec.startswith(_GPT2_PREFIX) and len(spec) > len(_GPT2_PREFIX):
        return Gpt2Tokenizer(spec[len(_GPT2_PREFIX) :], context_length)
    raise ValueError(
        f"Unknown tokenizer spec {spec!r}: expected 'clip', 'sentencepiece:/path/to/model' "
        "or 'gpt2:/dir/with/vocab.json+merges.txt'"
    )
