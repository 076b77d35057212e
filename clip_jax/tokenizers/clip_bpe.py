"""CLIP's byte-level BPE tokenizer, id-for-id equal to OpenAI CLIP / open_clip.

Vocabulary: 256 byte symbols, the same 256 with an end-of-word marker
"</w>", 48,894 merges and two special tokens: 49,408 ids in all, with
<start_of_text> = 49406 and <end_of_text> = 49407. Rows are padded with 0.

Beware: pad 0 is also a real token (the byte "!" not ending a word, e.g. in
'!"!'), so the end of a row is found with the EOT id, never with `ids != 0`.
"""
from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
from collections.abc import Callable, Sequence
from typing import NamedTuple

import ftfy
import numpy as np
import regex

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # CLIP uses the first 48,894 merges of the file.
SOT = "<start_of_text>"
EOT = "<end_of_text>"
END_OF_WORD = "</w>"
# IGNORECASE as in CLIP: it changes matches even on lowercased text (e.g. "'ſ"
# matches "'s" because the long s case-folds to "s").
_PATTERN = regex.compile(
    rf"""{SOT}|{EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+""",
    regex.IGNORECASE,
)


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """Maps each byte to a printable character (GPT-2's reversible byte map).

    Printable Latin-1 bytes map to themselves; the other 68 (control chars,
    space, ...) map to chr(256 + k) in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + k) for k in range(len(others))]
    return dict(zip(printable + others, chars))


class _Vocab(NamedTuple):
    encoder: dict[str, int]  # BPE symbol -> id
    ranks: dict[tuple[str, str], int]  # merge pair -> priority (lower merges first)


@functools.cache
def _load_vocab() -> _Vocab:
    """Reads the shipped merges file once per process."""
    raw = importlib.resources.files(__package__).joinpath(VOCAB_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a version header
    byte_chars = list(bytes_to_unicode().values())
    symbols = byte_chars + [c + END_OF_WORD for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
    return _Vocab(encoder={s: i for i, s in enumerate(symbols)}, ranks={m: i for i, m in enumerate(merges)})


def merge_by_rank(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-level BPE on one word's symbols: merges the adjacent pair of lowest rank until none has a rank."""
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda pair: ranks.get(pair, len(ranks)))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def framed_rows(
    encode: Callable[[str], list[int]], texts: str | Sequence[str], start: int, end: int, context_length: int
) -> np.ndarray:
    """int32 [N, context_length] rows of start, encode(text), end, zeros; a text cut to the context keeps end last."""
    if isinstance(texts, str):
        texts = [texts]
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in zip(out, texts):
        ids = [start, *encode(text), end][:context_length]
        ids[-1] = end
        row[: len(ids)] = ids
    return out


@functools.lru_cache(maxsize=1 << 18)
def _bpe(word: str) -> tuple[int, ...]:
    """Ids of one pre-tokenized word (already byte-mapped), merging greedily by rank."""
    vocab = _load_vocab()
    return tuple(vocab.encoder[p] for p in merge_by_rank([*word[:-1], word[-1] + END_OF_WORD], vocab.ranks))


def clean_text(text: str) -> str:
    """open_clip's 'lower' cleaning: ftfy, HTML-unescape twice, collapse whitespace, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """Texts -> int32 [N, context_length]: SOT, BPE ids, EOT, then zeros.

    Texts longer than the context are cut to `context_length` ids with EOT
    written over the last one, as open_clip does.
    """

    vocab_size = 49408
    sot_token_id = 49406
    eot_token_id = 49407
    pad_id = 0
    special_ids = (pad_id, sot_token_id, eot_token_id)  # ids that frame a caption rather than say something

    def __init__(self, context_length: int = 77):
        if context_length < 1:
            raise ValueError(f"context_length must be positive, got {context_length}")
        self.context_length = context_length
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        encoder = _load_vocab().encoder
        self._decoder = {i: s for s, i in encoder.items()}
        self._special = {SOT: encoder[SOT], EOT: encoder[EOT]}

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without SOT/EOT or padding."""
        ids: list[int] = []
        for piece in _PATTERN.findall(clean_text(text)):
            if piece in self._special:  # CLIP turns literal "<end_of_text>" in a text into the special id.
                ids.append(self._special[piece])
            else:
                ids.extend(_bpe("".join(self._byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of `ids` as open_clip decodes it: each word followed by a space.

        Every id is decoded, special tokens and zeros included: strip them first.
        """
        symbols = "".join(self._decoder[int(i)] for i in ids)
        text = bytes(self._byte_decoder[c] for c in symbols).decode("utf-8", errors="replace")
        return text.replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Tokenizes a text or a batch of texts: int32 [N, context_length]."""
        return framed_rows(self.encode, texts, self.sot_token_id, self.eot_token_id, self.context_length)
