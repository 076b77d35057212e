"""Tokenizers: CLIP BPE against open_clip's ids, SentencePiece training and layout."""
import json
import os
import random

import numpy as np
import pytest
import sentencepiece as spm

from clip_jax.tokenizers import ClipTokenizer, SentencePieceTokenizer, get_tokenizer, train_sentencepiece

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "tests", "fixtures", "tokenizer_ids.json"), encoding="utf-8") as f:
    CASES = json.load(f)["cases"]


def padded(case: dict) -> np.ndarray:
    """The fixture's full open_clip row: [context_length]."""
    return np.pad(case["ids"], (0, case["context_length"] - len(case["ids"])))


# ---------------------------------------------------------------- CLIP BPE


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-ctx{c['context_length']}" for i, c in enumerate(CASES)])
def test_clip_matches_open_clip(case):
    tokens = ClipTokenizer(case["context_length"])(case["text"])
    np.testing.assert_array_equal(tokens, padded(case)[None])


def test_clip_batch_equals_single_rows():
    cases = [c for c in CASES if c["context_length"] == 77]
    tokens = ClipTokenizer()([c["text"] for c in cases])
    assert tokens.shape == (len(cases), 77) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, np.stack([padded(c) for c in cases]))


def test_clip_shapes_and_constants():
    tok = ClipTokenizer(context_length=20)
    single = tok("a photo of a cat")
    assert single.shape == (1, 20) and single.dtype == np.int32
    assert tok(("a", "b", "c")).shape == (3, 20)
    assert tok([]).shape == (0, 20)
    assert (tok.vocab_size, tok.sot_token_id, tok.eot_token_id, tok.pad_id) == (49408, 49406, 49407, 0)
    assert tok.decode([tok.sot_token_id, tok.eot_token_id]) == "<start_of_text><end_of_text>"
    assert tok.decode([tok.vocab_size - 3]).strip()  # the last merge decodes to text
    with pytest.raises(ValueError, match="context_length"):
        ClipTokenizer(0)


@pytest.mark.parametrize("text", ["a photo of a cat sitting on the mat", "two dogs playing in the snow at night"])
def test_clip_decode_round_trip(text):
    tok = ClipTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text + " "  # open_clip's decode ends every word with a space
    assert tok.decode(np.asarray(ids)).strip() == text


# ---------------------------------------------------------------- SentencePiece

WORDS = {
    "adj": "red green blue small large happy sleepy fluffy wooden shiny old young striped".split(),
    "noun": "cat dog bird car house tree boat horse child woman man bicycle table chair flower".split(),
    "verb": "sitting standing running sleeping jumping lying parked floating waiting".split(),
    "place": "on the grass|in the snow|near a river|on a table|under a bridge|at the beach|in a kitchen".split("|"),
}


def write_captions(path) -> str:
    """2000 made-up captions, one a line; returns the path."""
    rng = random.Random(0)
    lines = []
    syllables = "ka lo mi ne su ta ri po ve da gu sho ble tran qui fer zan ox el um".split()
    for _ in range(2000):
        name = "".join(rng.choices(syllables, k=rng.randint(2, 4)))  # made-up names give the vocabulary variety
        words = [rng.choice(["A", "a", "The", "the"]), rng.choice(WORDS["adj"]), rng.choice(WORDS["noun"]), "named"]
        words += [name.capitalize(), rng.choice(WORDS["verb"]), rng.choice(WORDS["place"])]
        lines.append(" ".join(words) + rng.choice(["", "."]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def captions_file(tmp_path_factory):
    return write_captions(tmp_path_factory.mktemp("captions") / "captions.txt")


@pytest.fixture(scope="module")
def spm_model(captions_file, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spm") / "sub" / "spm"
    model_file = train_sentencepiece(captions_file, str(prefix), vocab_size=200, lowercase=True, character_coverage=1.0)
    assert model_file == f"{prefix}.model" and os.path.isfile(model_file)
    return model_file


def test_train_sentencepiece_id_layout(spm_model):
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    assert sp.vocab_size() == 200
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2, 3)


def test_sentencepiece_rows(spm_model):
    tok = SentencePieceTokenizer(spm_model, context_length=32)
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    texts = ["a red cat sitting on the grass", "", "Zebra!"]  # "z" and "!" are unknown to the model
    tokens = tok(texts)
    assert tokens.shape == (3, 32) and tokens.dtype == np.int32
    for row, text in zip(tokens, texts):
        ids = sp.encode(text)
        np.testing.assert_array_equal(row[: len(ids) + 1], ids + [tok.eos_id])
        assert not row[len(ids) + 1 :].any()
    assert tokens[1, 0] == tok.eos_id
    assert (tokens[2] == sp.unk_id()).any()
    np.testing.assert_array_equal(tok("a red cat"), tok(["a red cat"]))
    np.testing.assert_array_equal(tok("A RED CAT"), tok("a red cat"))  # lowercase normalisation
    assert tok.decode(tok("a red cat")[0]) == "a red cat"
    assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (200, 0, 3)


def test_sentencepiece_truncation_keeps_eos_last(spm_model):
    tok = SentencePieceTokenizer(spm_model, context_length=8)
    text = "a striped horse standing under a bridge and a shiny car parked at the beach"
    ids = tok.encode(text)
    assert len(ids) > 8
    np.testing.assert_array_equal(tok(text)[0], ids[:7] + [tok.eos_id])


def test_sentencepiece_errors(captions_file, tmp_path):
    missing = str(tmp_path / "nope.model")
    with pytest.raises(FileNotFoundError, match="nope.model"):
        SentencePieceTokenizer(missing)
    with open(os.devnull, "w") as devnull:  # SentencePiece's default layout: unk 0, no pad
        spm.SentencePieceTrainer.train(
            input=captions_file, model_prefix=str(tmp_path / "default"), vocab_size=100, logstream=devnull
        )
    with pytest.raises(ValueError, match="pad"):
        SentencePieceTokenizer(str(tmp_path / "default.model"))


# ---------------------------------------------------------------- factory


def test_get_tokenizer(spm_model):
    clip = get_tokenizer("clip", 32)
    assert isinstance(clip, ClipTokenizer) and clip("a cat").shape == (1, 32)
    sp = get_tokenizer(f"sentencepiece:{spm_model}", 12)
    assert isinstance(sp, SentencePieceTokenizer) and sp("a cat").shape == (1, 12)
    for bad in ["bert", "CLIP", "sentencepiece:", "spm:/tmp/x.model", ""]:
        with pytest.raises(ValueError, match=f"spec {bad!r}"):
            get_tokenizer(bad, 16)
