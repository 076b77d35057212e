"""SentencePiece tokenizer for text towers trained from scratch.

Convention: id 0 is padding and nothing else, so a model can tell text from
padding by `tokens != 0`. Each row holds the text's ids, then EOS, then zeros;
a long text is cut so that EOS stays the last id. Models made with
`train_sentencepiece` use pad 0, unk 1, bos 2 (unused here), eos 3.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sentencepiece as spm
from etils import epath


class SentencePieceTokenizer:
    """Texts -> int32 [N, context_length] with a SentencePiece model (pad 0, EOS last)."""

    pad_id = 0

    def __init__(self, model_file: str, context_length: int = 64):
        """model_file: a .model file, local or in a bucket (gs://...)."""
        if not epath.Path(model_file).is_file():
            raise FileNotFoundError(f"SentencePiece model file not found: {model_file!r}")
        if context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.model_file = model_file
        self.context_length = context_length
        self._sp = spm.SentencePieceProcessor(model_proto=epath.Path(model_file).read_bytes())
        if self._sp.pad_id() != self.pad_id:
            raise ValueError(
                f"{model_file!r} has pad id {self._sp.pad_id()}, but clip_jax pads with 0: "
                "train it with pad_id=0 (python -m clip_jax.tokenizers.sentencepiece_trainer)"
            )
        if self._sp.eos_id() < 0:
            raise ValueError(f"{model_file!r} has no EOS piece; train it with an eos_id")
        self.eos_id = self._sp.eos_id()
        self.vocab_size = self._sp.vocab_size()
        # ids that frame a text rather than say something: pad, EOS and the model's other control pieces
        self.special_ids = tuple(i for i in range(self.vocab_size) if i == self.pad_id or self._sp.is_control(i))

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without EOS or padding."""
        return self._sp.encode(text)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids`; pad, EOS and other control ids decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes a text or a batch of texts: int32 [N, context_length]."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), np.int32)
        for row, ids in zip(out, self._sp.encode(list(texts))):
            ids = [*ids[: self.context_length - 1], self.eos_id]
            row[: len(ids)] = ids
        return out
