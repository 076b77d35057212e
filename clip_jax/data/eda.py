"""EDA caption augmentation (Wei & Zou 2019) as DeCLIP uses it: one random operation per caption.

    rng = np.random.default_rng([seed, m])
    augment_caption("A small red circle in the center", rng, load_synonyms())
    # e.g. "a small crimson circle in the center", "a small red center in the circle"

The caption is lowercased and split on whitespace; one of EDA's operations,
drawn uniformly (as DeCLIP does), rewrites its words:

- synonym replacement: n = max(1, round(alpha * words)) distinct replaceable
  words (not stop words, listed in the synonyms) each become a random
  synonym, at every occurrence (as EDA replaces them);
- random swap: n times, the words at two random positions trade places;
- random deletion: each word is dropped with probability alpha, keeping one
  random word when all would go.

A word's trailing punctuation stays attached to it: "corner," swaps and is
deleted as one word, and is looked up as "corner" and replaced by e.g.
"angle,". Synonyms come from `synonyms.txt` shipped with the package (a
hand-written list for image-caption vocabulary; no WordNet needed).
Everything is a pure function of the words and the numpy Generator.
"""
from __future__ import annotations

import functools
import importlib.resources
import string
from collections.abc import Mapping, Sequence

import numpy as np

SYNONYMS_FILE = "synonyms.txt"
OPERATIONS = ("synonym_replacement", "random_swap", "random_deletion")
# EDA's English stop words (its `stop_words` list): never replaced by synonyms.
STOP_WORDS = frozenset((
    "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "your", "yours", "yourself",
    "yourselves", "he", "him", "his", "himself", "she", "her", "hers", "herself", "it", "its", "itself",
    "they", "them", "their", "theirs", "themselves", "what", "which", "who", "whom", "this", "that",
    "these", "those", "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
    "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if", "or", "because", "as",
    "until", "while", "of", "at", "by", "for", "with", "about", "against", "between", "into", "through",
    "during", "before", "after", "above", "below", "to", "from", "up", "down", "in", "out", "on", "off",
    "over", "under", "again", "further", "then", "once", "here", "there", "when", "where", "why", "how",
    "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not",
    "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "should",
    "now", "",
))


def parse_synonyms(text: str) -> dict[str, tuple[str, ...]]:
    """Lines "word<TAB>syn1,syn2,..." ("#" lines and blank lines skipped) -> {word: synonyms}."""
    table: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        word, sep, rest = line.partition("\t")
        synonyms = tuple(s.strip() for s in rest.split(",") if s.strip())
        if not sep or not word or not synonyms:
            raise ValueError(f"synonyms line {number}: expected 'word<TAB>syn1,syn2,...', got {line!r}")
        if word in table:
            raise ValueError(f"synonyms line {number}: {word!r} is listed twice")
        table[word] = synonyms
    return table


@functools.lru_cache(maxsize=1)
def load_synonyms() -> dict[str, tuple[str, ...]]:
    """The synonyms shipped with the package (cached: one shared dict, not to be modified)."""
    return parse_synonyms(importlib.resources.files(__package__).joinpath(SYNONYMS_FILE).read_text("utf-8"))


def _key(word: str) -> str:
    """A word without its trailing punctuation: what synonyms are looked up by."""
    return word.rstrip(string.punctuation)


def synonym_replacement(
    words: Sequence[str], rng: np.random.Generator, synonyms: Mapping[str, Sequence[str]], n: int
) -> list[str]:
    """`words` with up to n distinct replaceable words each replaced by a random synonym at every occurrence.

    Replaceable: not a stop word and listed in `synonyms` (looked up without
    trailing punctuation, which the replacement keeps). Fewer than n when
    fewer are replaceable; none leaves the words as they are.
    """
    keys = [_key(w) for w in words]
    candidates = list(dict.fromkeys(k for k in keys if k not in STOP_WORDS and synonyms.get(k)))
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:n]]
    replacement = {k: synonyms[k][rng.integers(len(synonyms[k]))] for k in chosen}
    return [replacement[k] + w[len(k):] if k in replacement else w for w, k in zip(words, keys, strict=True)]


def random_swap(words: Sequence[str], rng: np.random.Generator, n: int) -> list[str]:
    """`words` after n swaps, each of the words at two distinct random positions (fewer than 2 words: as is)."""
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.choice(len(out), size=2, replace=False)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: Sequence[str], rng: np.random.Generator, p: float) -> list[str]:
    """`words` with each dropped with probability p; one random word is kept when all would be dropped."""
    if not words:
        return []
    kept = [w for w, u in zip(words, rng.random(len(words)), strict=True) if u >= p]
    return kept or [words[rng.integers(len(words))]]


def augment_caption(
    caption: str, rng: np.random.Generator, synonyms: Mapping[str, Sequence[str]], alpha: float = 0.1
) -> str:
    """The lowercased caption rewritten by one of EDA's operations drawn uniformly (see the module docstring).

    alpha: the fraction of words replaced or swapped (at least one), and the
    deletion probability. An empty caption stays "".
    """
    words = caption.lower().split()
    if not words:
        return ""
    n = max(1, round(alpha * len(words)))
    operation = OPERATIONS[rng.integers(len(OPERATIONS))]
    if operation == "synonym_replacement":
        words = synonym_replacement(words, rng, synonyms, n)
    elif operation == "random_swap":
        words = random_swap(words, rng, n)
    else:
        words = random_deletion(words, rng, alpha)
    return " ".join(words)
