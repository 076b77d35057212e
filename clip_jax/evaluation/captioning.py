"""Caption metrics as the COCO caption evaluation toolkit computes them.

    from clip_jax.evaluation import captioning_metrics
    captioning_metrics(["a dog runs on the grass"],
                       [["A dog running on grass.", "A brown dog runs outside."]])
    # {"bleu1": ..., "bleu2": ..., "bleu3": ..., "bleu4": ..., "cider": ...}

Mirrors coco-caption (tylin/coco-caption, packaged as pycocoevalcap): captions
go through its tokenisation (tokenize_caption, an approximation in Python of
the Stanford PTBTokenizer that coco-caption runs in Java), then

- bleu: corpus BLEU-1..4 of bleu/bleu_scorer.py, with its "closest" reference
  length and its 1e-15 / 1e-9 smoothing constants, so a BLEU-n with no matched
  n-gram is tiny but not exactly 0 (e.g. ~1e-4 for a BLEU-4 whose 4-grams
  alone find no match), exactly as coco-caption reports it.
- cider: CIDEr-D of cider/cider_scorer.py: tf-idf n-gram vectors (n = 1..4)
  with document frequencies over the references of the evaluated set,
  candidate weights clipped by the reference's, a Gaussian length penalty
  (sigma 6) and x10. Its length is coco-caption's: the number of bigrams
  (max(words - 1, 0)), not of words. With one image every idf is log(1) - ...
  = 0, so CIDEr of a single image is 0, as in coco-caption.

Pure Python and NumPy; the scores match pycocoevalcap to float rounding
(tests/test_captioning_metrics.py, fixture from
tests/fixtures/make_captioning_fixtures.py).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

# coco-caption's tokenizer/ptbtokenizer.py PUNCTUATIONS, verbatim. The Java
# tokenizer runs with -lowerCase, which lower-cases -LRB- etc. too, so those
# four never match and bracket tokens (-lrb-, -rrb-, -lcb-, -rcb-, -lsb-,
# -rsb-) are kept in the scored text; so are runs such as "!!" or "?!".
PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Words whose trailing period PTBTokenizer (CoreNLP 3.4.1, PTBLexer) keeps;
# a subset of its abbreviation lists, lower-cased.
_ABBREVIATIONS = frozenset(
    """
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thurs fri
    ala ariz az ark calif colo conn ct dak del fla ga ill ind kan kans ky la mass md mich minn miss mo
    mont neb nev okla ore pa penn tenn tex va vt wash wis wisc wyo
    mr mrs ms dr drs prof profs sen sens rep reps atty attys lt col gen messrs gov govs adm rev maj sgt
    cpl pvt mt capt st ste ave pres lieut hon brig cmdr comdr pfc spc supt supts det mme mlle
    inc co cos corp ltd plc dept assn univ intl jr sr bros blvd rd esq etc al seq vs cf ft
    """.split()
)
_ACRONYM = re.compile(r"[a-z](?:\.[a-z])*")  # "u.s", "a.m", "e.g", "b": keeps a final "."
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_BRACKET_TOKENS = frozenset(_BRACKETS.values())
_UNICODE = {
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2018": "'", "\u2019": "'",
    "\u2014": " -- ", "\u2013": " -- ", "\u2026": " ... ", "\u00a0": " ",
}
_URL = re.compile(r"^(?:[a-z]+://|www\.)|@")
# Split points inside a chunk: runs of dots (3+) and dashes (2+), " ; * = % $ & ~ ^,
# "," and ":" unless between digits, runs of ! and ?, and "#" before a digit.
_INNER = re.compile(r"(\.{3,}|-{2,}|[\";*=%$&~^]|,(?!\d)|(?<!\d),|:(?!\d)|(?<!\d):|[!?]+|#(?=\d))")
_LEADING = re.compile(r"^(\.{3,}|\.|-{2,}|-(?!\d)|[\"`,:;]|'(?!\d)|[!?]+)")
_CLITIC_TOKEN = re.compile(r"n't|'n'|'(?:s|re|ve|ll|d|m)")  # kept whole when standalone
_TRAILING = re.compile(r"(\.{3,}|-+|[\"`',:;]|[!?]+)$")
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"],
                "gotta": ["got", "ta"], "lemme": ["lem", "me"], "gimme": ["gim", "me"]}
_CLITIC = re.compile(r"^(.*?[a-z0-9])(n't|'s|'re|'ve|'ll|'d|'m)$")


def _split_clitics(word: str) -> list[str]:
    """Splits PTB's clitics: don't -> [do, n't], he'd've -> [he, 'd, 've], cannot -> [can, not]."""
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    tail = []
    while (match := _CLITIC.match(word)) is not None:
        word, clitic = match.groups()
        if clitic == "n't" and word.endswith("'"):
            break
        tail.insert(0, clitic)
    return [word, *tail]


def _split_chunk(chunk: str) -> list[str]:
    """PTB tokens of one whitespace-free, lower-cased chunk (punctuation included)."""
    if chunk in _BRACKET_TOKENS or _CLITIC_TOKEN.fullmatch(chunk):
        return [chunk]
    if chunk.startswith(("'tis", "'twas")):  # PTB: 't is, 't was
        return ["'t", *_split_chunk(chunk[2:])]
    head: list[str] = []
    while chunk and (match := _LEADING.match(chunk)) is not None:
        head.append(match.group(1))
        chunk = chunk[match.end():]
    tail: list[str] = []
    while chunk:
        if (match := _TRAILING.search(chunk)) is not None:
            tail.insert(0, match.group(1))
            chunk = chunk[: match.start()]
        elif chunk.endswith("..") and not chunk.endswith("..."):
            tail.insert(0, ".")
            chunk = chunk[:-1]
        elif chunk.endswith(".") and len(chunk) > 1:
            stem = chunk[:-1]
            if stem in _ABBREVIATIONS or _ACRONYM.fullmatch(stem):
                break
            tail.insert(0, ".")
            chunk = stem
        else:
            break
    if not chunk:
        return [_normalise_punctuation(token) for token in head + tail]
    pieces = [chunk] if _URL.search(chunk) else [p for p in _INNER.split(chunk) if p]
    body = []
    for piece in pieces:
        body.extend(_split_clitics(piece) if piece[0].isalnum() else [piece])
    return [_normalise_punctuation(token) for token in head + body + tail]


def _normalise_punctuation(token: str) -> str:
    """PTB's forms: a double quote -> '' (both are dropped), "---" -> "--", "...." -> "..."."""
    if token == '"':
        return "''"
    if len(token) > 2 and set(token) == {"-"}:
        return "--"
    if len(token) > 3 and set(token) == {"."}:
        return "..."
    return token


def tokenize_caption(text: str) -> list[str]:
    """coco-caption's tokenisation of one caption: lower-cased PTB tokens without punctuation.

    coco-caption runs the Stanford CoreNLP 3.4.1 PTBTokenizer (`-preserveLines
    -lowerCase`) and drops the tokens in PTB_PUNCTUATION. This is a regex
    re-implementation of the part of PTBTokenizer that matters for captions:

    - lower-cases; newlines are spaces; brackets become -lrb- -rrb- -lsb- -rsb-
      -lcb- -rcb- and, like in coco-caption, are kept (see PTB_PUNCTUATION);
    - splits off . , ; : ! ? quotes and dashes at word edges and drops them,
      but keeps "," and ":" between digits (1,000, 10:30), inner periods
      (3.5, umbrella.the), inner hyphens (black-and-white, -5) and inner
      apostrophes (o'clock, '90s); runs of ! and ? ("!!", "?!") stay one token
      and, as in coco-caption, are kept;
    - keeps the final period of abbreviations (mr., st., etc., vs., a list
      taken from PTBLexer) and letter acronyms (u.s., a.m., e.g., b.);
    - splits clitics: do n't, ca n't, it 's, he 'd 've, can not, gon na,
      wan na, got ta, lem me, gim me, 't is;
    - splits off $ % & * = ~ ^ and "#" before a digit ($ 5, 50 %, at & t);
    - maps curly quotes to straight ones, em/en dashes to "--", "..." (U+2026)
      to "..."; leaves URLs and e-mail addresses whole.

    Known differences from the Java tokenizer (rare in captions): no
    currency/fraction normalisation (PTB: "£5" -> "# 5", "½" -> "1/2"), no
    splitting of "y'all", "rock'n'roll", 5'10", "a+b", "a|b", "a\\b",
    "12:00pm"; a standalone clitic ("they 're") stays whole where PTB may
    split it depending on context; the
    abbreviation list is a subset, and PTB's case-dependent handling of a
    sentence-final single capital ("A. B." -> "a. b") is not modelled.

    Args:
      text: one caption, any case.

    Returns:
      its tokens; [] for an empty or punctuation-only caption.
    """
    text = text.lower().replace("\n", " ").replace("\r", " ")
    for char, replacement in _UNICODE.items():
        text = text.replace(char, replacement)
    for char, replacement in _BRACKETS.items():
        text = text.replace(char, f" {replacement} ")
    tokens = [token for chunk in text.split() for token in _split_chunk(chunk)]
    return [token for token in tokens if token not in PTB_PUNCTUATION]


def _tokenized(
    candidates: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Checks the pairing and turns every caption into tokens."""
    if isinstance(candidates, str) or any(isinstance(refs, str) for refs in references):
        raise TypeError("candidates is a sequence of captions and references a sequence of caption lists")
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates for {len(references)} reference lists")
    if not candidates:
        raise ValueError("no captions to score")
    if not all(len(refs) for refs in references):
        raise ValueError("every image needs at least one reference")
    split = tokenize_caption if tokenize else str.split
    return [split(c) for c in candidates], [[split(r) for r in refs] for refs in references]


def _ngrams(words: Sequence[str], max_n: int) -> Counter:
    """Counts of the 1..max_n-grams (tuples) of words, in coco-caption's order."""
    return Counter(tuple(words[i : i + k]) for k in range(1, max_n + 1) for i in range(len(words) - k + 1))


def _bleu_tokens(candidates: list[list[str]], references: list[list[list[str]]], max_n: int) -> list[float]:
    """Corpus BLEU-1..max_n of token lists (bleu_scorer.BleuScorer.compute_score, option "closest")."""
    tiny, small = 1e-15, 1e-9  # coco-caption's: no division by 0, ~0 for no match
    correct, guess = [0] * max_n, [0] * max_n
    testlen = reflen = 0
    for cand, refs in zip(candidates, references):
        max_ref_counts: dict[tuple[str, ...], int] = {}
        for ref in refs:
            for ngram, count in _ngrams(ref, max_n).items():
                max_ref_counts[ngram] = max(max_ref_counts.get(ngram, 0), count)
        length = len(cand)
        testlen += length
        reflen += min((abs(len(ref) - length), len(ref)) for ref in refs)[1]  # closest; ties -> shorter
        for k in range(max_n):
            guess[k] += max(0, length - k)
        for ngram, count in _ngrams(cand, max_n).items():
            correct[len(ngram) - 1] += min(max_ref_counts.get(ngram, 0), count)
    scores, product = [], 1.0
    for k in range(max_n):
        product *= float(correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + tiny) / (reflen + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, tokenize: bool = True
) -> dict[str, float]:
    """Corpus BLEU-1..max_n as coco-caption's Bleu scorer computes it.

    Over the whole set: modified precision p_n = sum of clipped n-gram matches
    (a candidate n-gram counts at most as often as in the reference where it is
    most frequent) / sum of candidate n-grams; BLEU-n = (p_1 ... p_n)^(1/n) x
    BP with BP = exp(1 - r/c) when c < r, c the total candidate length and r
    the total of each image's reference length closest to its candidate (ties
    to the shorter). Every p_n is (matches + 1e-15) / (n-grams + 1e-9), as in
    coco-caption.

    Args:
      candidates: [N] one generated caption per image.
      references: [N] of lists of >= 1 reference captions.
      max_n: the longest n-gram.
      tokenize: apply tokenize_caption (coco-caption's PTB step); False scores
        already tokenised text split on whitespace, as coco-caption's scorers do.

    Returns:
      {"bleu1": ..., ..., f"bleu{max_n}": ...}, each in [0, 1].
    """
    cands, refs = _tokenized(candidates, references, tokenize)
    return {f"bleu{k + 1}": score for k, score in enumerate(_bleu_tokens(cands, refs, max_n))}


def _cider_tokens(
    candidates: list[list[str]], references: list[list[list[str]]], max_n: int, sigma: float
) -> np.ndarray:
    """Per-image CIDEr-D of token lists (cider_scorer.CiderScorer.compute_cider), [N]."""
    cand_counts = [_ngrams(c, max_n) for c in candidates]
    ref_counts = [[_ngrams(r, max_n) for r in refs] for refs in references]
    document_frequency: Counter = Counter()
    for refs in ref_counts:
        document_frequency.update({ngram for counts in refs for ngram in counts})
    log_num_images = np.log(float(len(candidates)))

    def vectorise(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(max_n)]
        norm = [0.0] * max_n
        length = 0  # coco-caption's length: the number of bigrams
        for ngram, tf in counts.items():
            n = len(ngram) - 1
            idf = log_num_images - np.log(max(1.0, document_frequency.get(ngram, 0.0)))
            vec[n][ngram] = float(tf) * idf
            norm[n] += vec[n][ngram] ** 2
            if n == 1:
                length += tf
        return vec, [np.sqrt(x) for x in norm], length

    scores = []
    for cand, refs in zip(cand_counts, ref_counts):
        vec, norm, length = vectorise(cand)
        total = np.zeros(max_n)
        for ref in refs:
            vec_ref, norm_ref, length_ref = vectorise(ref)
            penalty = np.e ** (-(float(length - length_ref) ** 2) / (2 * sigma**2))
            for n in range(max_n):
                value = 0.0
                for ngram, weight in vec[n].items():
                    ref_weight = vec_ref[n].get(ngram, 0.0)
                    value += min(weight, ref_weight) * ref_weight
                if norm[n] != 0 and norm_ref[n] != 0:
                    value /= norm[n] * norm_ref[n]
                total[n] += value * penalty
        scores.append(np.mean(total) / len(refs) * 10.0)
    return np.asarray(scores, dtype=np.float64)


def cider(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    max_n: int = 4,
    sigma: float = 6.0,
    tokenize: bool = True,
) -> float:
    """Corpus CIDEr-D as coco-caption's Cider scorer computes it.

    For an image with candidate c and references s_1..s_m:
      CIDEr-D = 10 / (max_n m) sum_n sum_j
                exp(-(l(c) - l(s_j))^2 / (2 sigma^2)) <min(g_n(c), g_n(s_j)), g_n(s_j)> / (|g_n(c)| |g_n(s_j)|)
    where g_n is the vector of n-gram count x log(N / df), N the number of
    images, df the number of images whose references contain the n-gram
    (max 1), the min elementwise (clipping), l the number of bigrams (as in
    coco-caption). The corpus score is the mean over images; idf comes from
    this set's references, so it depends on the whole set (one image: 0).

    Args:
      candidates: [N] one generated caption per image.
      references: [N] of lists of >= 1 reference captions.
      max_n: the longest n-gram.
      sigma: the length penalty's standard deviation.
      tokenize: as in bleu.

    Returns:
      the mean CIDEr-D, >= 0 (not bounded by 10: rare n-grams weigh more).
    """
    cands, refs = _tokenized(candidates, references, tokenize)
    return float(np.mean(_cider_tokens(cands, refs, max_n, sigma)))


def captioning_metrics(
    candidates: Sequence[str], references: Sequence[Sequence[str]], tokenize: bool = True
) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D of one caption per image against its references, tokenising once.

    Args:
      candidates: [N] one generated caption per image.
      references: [N] of lists of >= 1 reference captions.
      tokenize: as in bleu.

    Returns:
      {"bleu1", "bleu2", "bleu3", "bleu4", "cider"}.
    """
    cands, refs = _tokenized(candidates, references, tokenize)
    scores = {f"bleu{k + 1}": s for k, s in enumerate(_bleu_tokens(cands, refs, 4))}
    scores["cider"] = float(np.mean(_cider_tokens(cands, refs, 4, 6.0)))
    return scores
