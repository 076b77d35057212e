"""GPT-2's byte-level BPE tokenizer (GPT-2, GPT-J), id-for-id equal to Hugging Face's.

Reads a Hugging Face vocabulary directory: vocab.json (symbol -> id; GPT-2's
has 50,257 ids with <|endoftext|> = 50256, which GPT-J shares) and merges.txt
(a "#version" header, then one "a b" merge per line, highest priority first).
Text is kept as is: no lowercasing or cleaning. A literal "<|endoftext|>" in
a text becomes the special id, as Hugging Face does by default.

Rows are [EOT, ids, EOT, 0, ...]: GPT-2 starts a text with <|endoftext|> too.
Beware: pad 0 is also a real token (the byte "!", e.g. in 'hi!'), and EOT
also starts the row, so the end of a row is found with its last EOT, never
with `ids != 0` or the first EOT.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import numpy as np
import regex
from etils import epath

from clip_jax.tokenizers.clip_bpe import bytes_to_unicode, framed_rows, merge_by_rank

EOT = "<|endoftext|>"
_SPECIAL = regex.compile(f"({regex.escape(EOT)})")
_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _read_text(directory: epath.Path, name: str) -> str:
    """The UTF-8 text of directory/name, or a FileNotFoundError naming that file."""
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 tokenizer file not found: {str(path)!r}")
    return path.read_text(encoding="utf-8")


def _parse_merges(text: str) -> dict[tuple[str, str], int]:
    """merges.txt -> {(left, right): rank}, rank 0 merging first."""
    lines = [line for line in text.split("\n") if line and not line.startswith("#version")]
    ranks = {}
    for rank, line in enumerate(lines):
        pair = tuple(line.split(" "))
        if len(pair) != 2:
            raise ValueError(f"merges.txt: merge {rank + 1} is not two symbols separated by a space: {line!r}")
        ranks[pair] = rank
    return ranks


class Gpt2Tokenizer:
    """Texts -> int32 [N, context_length]: EOT, BPE ids, EOT, then zeros.

    Texts longer than the context are cut to `context_length` ids with EOT
    written over the last one, as ClipTokenizer does.
    """

    pad_id = 0

    def __init__(self, directory: str, context_length: int):
        """directory: holds vocab.json and merges.txt, local or in a bucket (gs://...)."""
        if context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        root = epath.Path(directory)
        self._encoder: dict[str, int] = json.loads(_read_text(root, "vocab.json"))
        self._ranks = _parse_merges(_read_text(root, "merges.txt"))
        if EOT not in self._encoder:
            raise ValueError(f"{directory!r}: vocab.json has no {EOT!r}")
        missing = [s for s in [*bytes_to_unicode().values(), *map("".join, self._ranks)] if s not in self._encoder]
        if missing:
            raise ValueError(f"{directory!r}: {len(missing)} byte or merged symbols not in vocab.json, e.g. {missing[0]!r}")
        self.directory = directory
        self.context_length = context_length
        self.vocab_size = len(self._encoder)
        self.eot_token_id = self._encoder[EOT]
        self.sot_token_id = self.eot_token_id
        self.special_ids = (self.pad_id, self.eot_token_id)  # ids that frame a text rather than say something
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._decoder = {i: s for s, i in self._encoder.items()}
        self._bpe = functools.lru_cache(maxsize=1 << 18)(self._bpe_uncached)

    def _bpe_uncached(self, word: str) -> tuple[int, ...]:
        """Ids of one pre-tokenized word (already byte-mapped), merging greedily by rank."""
        return tuple(self._encoder[p] for p in merge_by_rank(list(word), self._ranks))

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without EOT or padding.

        Like Hugging Face, the text is first split at each literal "<|endoftext|>",
        then each piece is pre-tokenized on its own (so spaces before it do not join the next word).
        """
        ids: list[int] = []
        for segment in _SPECIAL.split(text):
            if segment == EOT:
                ids.append(self.eot_token_id)
                continue
            for piece in _PATTERN.findall(segment):
                ids.extend(self._bpe("".join(self._byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` as Hugging Face decodes it: bytes joined, invalid UTF-8 replaced by U+FFFD.

        EOT and zeros decode like any id ("<|endoftext|>", "!"): strip them first. Ids outside
        vocab.json (GPT-J's padded logits 50257..50399) decode to nothing, as in Hugging Face.
        """
        symbols = "".join(self._decoder.get(int(i), "") for i in ids)
        return bytes(self._byte_decoder[c] for c in symbols).decode("utf-8", errors="replace")

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes a text or a batch of texts: int32 [N, context_length]."""
        return framed_rows(self.encode, texts, self.sot_token_id, self.eot_token_id, self.context_length)
