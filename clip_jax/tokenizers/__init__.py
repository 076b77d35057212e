"""Tokenizers: texts -> int32 [N, context_length] numpy arrays, padded with 0.

    get_tokenizer("clip", 77)                          # OpenAI CLIP BPE
    get_tokenizer("sentencepiece:/path/spm.model", 64)  # a trained SentencePiece model
"""
from __future__ import annotations

from clip_jax.tokenizers.clip_bpe import ClipTokenizer
from clip_jax.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
from clip_jax.tokenizers.sentencepiece_trainer import train_sentencepiece

__all__ = ["ClipTokenizer", "SentencePieceTokenizer", "get_tokenizer", "train_sentencepiece"]

_SENTENCEPIECE_PREFIX = "sentencepiece:"


def get_tokenizer(spec: str, context_length: int) -> ClipTokenizer | SentencePieceTokenizer:
    """Builds a tokenizer from a spec string: "clip" or "sentencepiece:PATH"."""
    if spec == "clip":
        return ClipTokenizer(context_length)
    if spec.startswith(_SENTENCEPIECE_PREFIX) and len(spec) > len(_SENTENCEPIECE_PREFIX):
        return SentencePieceTokenizer(spec[len(_SENTENCEPIECE_PREFIX) :], context_length)
    raise ValueError(f"Unknown tokenizer spec {spec!r}: expected 'clip' or 'sentencepiece:/path/to/model'")
