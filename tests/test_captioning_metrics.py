"""BLEU-1..4 and CIDEr-D equal coco-caption's (pycocoevalcap) on the stored fixture and hand cases.

fixtures/captioning_metrics.json holds pycocoevalcap's Bleu(4) and Cider()
scores, and its Java PTBTokenizer output, written by
fixtures/make_captioning_fixtures.py; pycocoevalcap is not needed here.
"""
import json
import math
import os

import numpy as np
import pytest

from clip_jax import evaluation
from clip_jax.evaluation import bleu, captioning_metrics, cider, tokenize_caption
from clip_jax.evaluation.captioning import _cider_tokens

with open(os.path.join(os.path.dirname(__file__), "fixtures", "captioning_metrics.json")) as f:
    FIXTURE = json.load(f)
SETS = FIXTURE["sets"]
RAW = FIXTURE["raw"]


def _close(actual, expected):
    return actual == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("name", sorted(SETS))
def test_bleu_matches_coco_caption(name):
    case = SETS[name]
    scores = bleu(case["candidates"], case["references"], tokenize=False)
    assert list(scores) == ["bleu1", "bleu2", "bleu3", "bleu4"]
    assert _close(list(scores.values()), case["bleu"])


@pytest.mark.parametrize("name", sorted(SETS))
def test_cider_matches_coco_caption(name):
    case = SETS[name]
    assert _close(cider(case["candidates"], case["references"], tokenize=False), case["cider"])
    cands = [c.split() for c in case["candidates"]]
    refs = [[r.split() for r in rs] for rs in case["references"]]
    assert _close(list(_cider_tokens(cands, refs, 4, 6.0)), case["cider_per_image"])


@pytest.mark.parametrize("name", sorted(SETS))
def test_tokenizing_pretokenised_text_changes_nothing(name):
    case = SETS[name]
    expected = {f"bleu{k + 1}": b for k, b in enumerate(case["bleu"])} | {"cider": case["cider"]}
    assert _close(captioning_metrics(case["candidates"], case["references"]), expected)


def test_tokenizer_matches_ptb_tokenizer_on_fixture_captions():
    for raw, tokenized in zip(RAW["candidates"], RAW["tokenized_candidates"]):
        assert tokenize_caption(raw) == tokenized.split()
    for raws, tokenizeds in zip(RAW["references"], RAW["tokenized_references"]):
        for raw, tokenized in zip(raws, tokenizeds):
            assert tokenize_caption(raw) == tokenized.split()


def test_raw_captions_score_like_coco_caption():
    scores = captioning_metrics(RAW["candidates"], RAW["references"])
    assert _close([scores[f"bleu{k}"] for k in range(1, 5)], RAW["bleu"])
    assert _close(scores["cider"], RAW["cider"])
    assert _close(bleu(RAW["candidates"], RAW["references"])["bleu4"], RAW["bleu"][3])
    assert _close(cider(RAW["candidates"], RAW["references"]), RAW["cider"])


# Outputs of coco-caption's PTBTokenizer (CoreNLP 3.4.1, -preserveLines -lowerCase) less its PUNCTUATIONS.
@pytest.mark.parametrize(
    "text, tokens",
    [
        ("A man riding a horse.", "a man riding a horse"),
        ("", ""),
        (" ... !  , ", ""),
        ('A man\'s hat, on a "red" table.', "a man 's hat on a red table"),
        ("Two dogs don't play; they can't run!", "two dogs do n't play they ca n't run"),
        ("I cannot believe it's 3.5 inches (about 9 cm) long...",
         "i can not believe it 's 3.5 inches -lrb- about 9 cm -rrb- long"),
        ("A black-and-white photo of Mr. Smith in the U.S. at 10:30 a.m.",
         "a black-and-white photo of mr. smith in the u.s. at 10:30 a.m."),
        ("People gonna wanna eat $5 pizzas & drinks -- yes.", "people gon na wan na eat $ 5 pizzas & drinks yes"),
        ("She said 'hello' and he'd've left. It's the dogs' bowl.",
         "she said hello and he 'd 've left it 's the dogs bowl"),
        ("A cat/dog on a table?? 1,000 people at 5pm.", "a cat/dog on a table ?? 1,000 people at 5pm"),
        ("A woman holding an umbrella.The street is wet", "a woman holding an umbrella.the street is wet"),
        ("Wow!! Really?! fine...", "wow !! really ?! fine"),
        ("A table,chair and sofa.A cat;dog:bird", "a table chair and sofa.a cat dog bird"),
        ("A {curly} [square] thing; 50% off! a*b ~x",
         "a -lcb- curly -rcb- -lsb- square -rsb- thing 50 % off a * b ~ x"),
        ("Teddy-bear --dash em\u2014dash \u201csmart quotes\u201d \u2018single\u2019 don\u2019t",
         "teddy-bear dash em dash smart quotes single do n't"),
        ("couldn't won't isn't I'm you're we've they'll", "could n't wo n't is n't i 'm you 're we 've they 'll"),
        ("Dr. Jones, St. Louis, etc. vs. approx. no.", "dr. jones st. louis etc. vs. approx no"),
        ("ok.. fine... yes.... no.", "ok fine yes no"),
        ("-hello- -5 --5 5-", "hello -5 5 5"),
        ("number #1 at #2, #hashtag @user www.example.com", "number # 1 at # 2 #hashtag @user www.example.com"),
        ("'tis the '90s", "'t is the '90s"),
        ("A DOG\non a\tMAT", "a dog on a mat"),
    ],
)
def test_tokenize_caption_like_ptb_tokenizer(text, tokens):
    assert tokenize_caption(text) == tokens.split()


def test_identical_captions_score_one():
    refs = [["a dog runs on the grass", "a brown dog"], ["two cats on a red sofa"]]
    scores = bleu(["a dog runs on the grass", "two cats on a red sofa"], refs)
    # coco-caption's p_n = (matches + 1e-15) / (n-grams + 1e-9): 1 to ~1e-10.
    assert all(s == pytest.approx(1.0, abs=1e-9) for s in scores.values())


def test_no_overlap_scores_zero():
    scores = captioning_metrics(["zebra giraffe", "blue sky"], [["a dog runs"], ["two cats sleep"]])
    # coco-caption's smoothing: p1 = p2 = 1e-15 / 2, p3 = p4 = 1e-15 / 1e-9 (no trigram to guess) -> ~1e-11.
    assert all(0 <= scores[f"bleu{k}"] < 1e-9 for k in range(1, 5))
    assert scores["cider"] == 0.0


def test_one_image_cider_is_zero():
    # idf = log(N) - log(df) = log(1) - log(1) = 0 for every reference n-gram.
    assert cider(["a dog runs on the grass"], [["a dog runs on the grass", "a dog"]]) == 0.0


def test_bleu_brevity_penalty_and_smoothing_by_hand():
    # c = 2 words; closest reference length r = 6; p1 = 2/2, p2 = 1/1 ("the cat"); BP = exp(1 - 6/2).
    # No trigram: p3 = (0 + 1e-15) / (0 + 1e-9) = 1e-6, so BLEU-3 = (1 * 1 * 1e-6)^(1/3) BP = 1e-2 BP.
    # (Each p_n with matches is off by the 1e-9 in its denominator: rel=1e-8.)
    scores = bleu(["The cat."], [["the cat sat on the mat", "a cat sat on a mat"]])
    bp = math.exp(-2.0)
    assert scores["bleu1"] == pytest.approx(bp, rel=1e-8)
    assert scores["bleu2"] == pytest.approx(bp, rel=1e-8)
    assert scores["bleu3"] == pytest.approx(1e-2 * bp, rel=1e-8)
    assert scores["bleu4"] == pytest.approx(1e-6 ** (2 / 4) * bp, rel=1e-8)  # p3 p4 = 1e-12


def test_bleu_clipping_and_closest_length_by_hand():
    # "the the the the" vs refs "the cat" (2) and "the the mat on it" (5): closest to 4 is 5 (|4-5| = 1 < 2).
    # p1 = min(4, max(1, 2)) / 4 = 2/4; p2: "the the" x3, clipped to 1 -> 1/3.
    # BP = exp(1 - 5/4). BLEU-2 = sqrt(1/2 * 1/3) BP.
    scores = bleu(["the the the the"], [["the cat", "the the mat on it"]], max_n=2)
    bp = math.exp(1 - 5 / 4)
    assert scores == pytest.approx({"bleu1": 0.5 * bp, "bleu2": math.sqrt(1 / 6) * bp}, rel=1e-8)


def test_corpus_bleu_is_not_the_mean_of_sentence_bleus():
    # Counts add over the corpus: p1 = (1 + 0) / (1 + 1) = 1/2, lengths c = r = 2: no BP.
    scores = bleu(["dog", "cat"], [["dog"], ["bird"]], max_n=1)
    assert scores["bleu1"] == pytest.approx(0.5, rel=1e-8)


def test_cider_by_hand():
    # N = 2 images, idf = log 2 - log 1 for every reference n-gram (each in one image's references).
    # Image 1, "dog dog" vs "dog": unigram g_c = [2 log2], g_r = [log2]; clipped dot min(2 log2, log2) log2
    #   = log2^2, norms 2 log2 and log2 -> 1/2. The bigram "dog dog" has no counterpart -> 0.
    #   Lengths in bigrams 1 and 0: penalty exp(-1 / 72). Score 10 (1/2 exp(-1/72) + 0 + 0 + 0) / 4.
    # Image 2, "cat" vs "cat": unigram cosine 1, no bigrams, penalty 1 -> 10 * 1 / 4 = 2.5.
    score = cider(["dog dog", "cat"], [["dog"], ["cat"]])
    assert score == pytest.approx((1.25 * math.exp(-1 / 72) + 2.5) / 2, rel=1e-12)


def test_cider_averages_over_references():
    # Image 1 has two references, one identical ("dog") and one disjoint ("bird"): the mean halves its 2.5.
    score = cider(["dog", "cat"], [["dog", "bird"], ["cat"]])
    assert score == pytest.approx((2.5 / 2 + 2.5) / 2, rel=1e-12)


def test_captioning_metrics_combines_bleu_and_cider():
    case = SETS["random_5"]
    combined = captioning_metrics(case["candidates"], case["references"], tokenize=False)
    assert combined == {**bleu(case["candidates"], case["references"], tokenize=False),
                        "cider": cider(case["candidates"], case["references"], tokenize=False)}
    assert all(isinstance(v, float) for v in combined.values())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="candidates"):
        bleu(["a dog"], [["a dog"], ["a cat"]])
    with pytest.raises(ValueError, match="no captions"):
        cider([], [])
    with pytest.raises(ValueError, match="at least one reference"):
        captioning_metrics(["a dog"], [[]])
    with pytest.raises(TypeError):
        bleu("a dog", [["a dog"]])
    with pytest.raises(TypeError):
        cider(["a dog"], ["a dog"])


def test_exported():
    for name in ("bleu", "cider", "captioning_metrics", "tokenize_caption"):
        assert name in evaluation.__all__
    assert np.isfinite(evaluation.captioning_metrics(["a dog"], [["a dog"]])["bleu4"])


# ---------------------------------------------------------------- scoring generated token rows


def test_row_text_reads_up_to_the_first_framing_id():
    from clip_jax.evaluation.caption_eval import row_text
    from clip_jax.tokenizers import ClipTokenizer

    tokenizer = ClipTokenizer(12)
    (row,) = tokenizer("a red circle")
    assert row_text(row, tokenizer) == "a red circle"  # start token, ids, end token, padding
    generated = np.array([*tokenizer.encode("a big ring"), tokenizer.eot_token_id, 0, 0])
    assert row_text(generated, tokenizer) == "a big ring"
    assert row_text(np.array([tokenizer.eot_token_id, *tokenizer.encode("later")]), tokenizer) == ""
    assert row_text(np.array(tokenizer.encode("no end")), tokenizer) == "no end"


@pytest.mark.parametrize(
    "caption,label,expected",
    [
        ("a small red circle in the top left corner", 0, True),
        ("the circle is red and small", 0, True),
        ("a red circle", 1, False),  # names red, not green
        ("a red and green circle", 0, False),  # names another class too
        ("a reddish circle", 0, False),  # whole words only
        ("A RED circle.", 0, True),  # coco-caption's tokens: lower case, punctuation dropped
        ("a dark red square", 2, True),  # a multi-word class name; the "red" inside it is not another class
        ("a red square", 2, False),
        ("a dark red and red square", 2, False),
    ],
)
def test_names_class(caption, label, expected):
    from clip_jax.evaluation.caption_eval import names_class

    assert names_class(caption, label, ["red", "green", "dark red"]) is expected


def test_caption_eval_metrics_score_the_rows_texts():
    """Token rows give the metrics of their texts; references left out by the mask are not used."""
    from clip_jax.evaluation.caption_eval import caption_eval_metrics
    from clip_jax.tokenizers import ClipTokenizer

    tokenizer = ClipTokenizer(16)
    generated = ["a red circle", "a big blue square at the top", "a ring"]
    references = [["a small red circle", "a red circle in the center"], ["a big blue square", "unused"], ["a green ring", "a ring"]]
    mask = np.array([[True, True], [True, False], [True, True]])
    rows = np.stack([tokenizer(r) for r in references])  # [3, 2, 16]
    new = np.stack([[*tokenizer.encode(c), tokenizer.eot_token_id, *[0] * (15 - len(tokenizer.encode(c)))][:15] for c in generated])
    metrics = caption_eval_metrics(new, rows, mask, tokenizer, np.array([0, 1, 2]), ["red", "blue", "green"])
    kept = [[r for r, m in zip(refs, row_mask) if m] for refs, row_mask in zip(references, mask)]
    assert {k: v for k, v in metrics.items() if k != "named"} == captioning_metrics(generated, kept)
    assert metrics["named"] == pytest.approx(2 / 3)  # "a ring" names no colour
