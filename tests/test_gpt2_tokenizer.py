"""GPT-2 byte-level BPE against Hugging Face's ids on a tiny vocabulary in GPT-2's file format.

The vocabulary and ids come from tests/fixtures/make_gpt2_tokenizer_fixtures.py.
"""
import json
import os
import shutil

import numpy as np
import pytest

from clip_jax.tokenizers import Gpt2Tokenizer, get_tokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
VOCAB_DIR = os.path.join(FIXTURES, "gpt2_tiny_tokenizer")
with open(os.path.join(FIXTURES, "gpt2_tokenizer_ids.json"), encoding="utf-8") as f:
    FIXTURE = json.load(f)
CASES = FIXTURE["cases"]
EOT = FIXTURE["eot_token_id"]


@pytest.fixture(scope="module")
def tokenizer() -> Gpt2Tokenizer:
    return Gpt2Tokenizer(VOCAB_DIR, context_length=64)


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['text'][:20]!r}" for i, c in enumerate(CASES)])
def test_encode_matches_hugging_face(tokenizer, case):
    assert tokenizer.encode(case["text"]) == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['text'][:20]!r}" for i, c in enumerate(CASES)])
def test_decode_matches_hugging_face(tokenizer, case):
    assert tokenizer.decode(case["ids"]) == case["decoded"]
    assert tokenizer.decode(np.asarray(case["ids"], np.int32)) == case["decoded"]
    assert [tokenizer.decode([i]) for i in case["ids"]] == case["decoded_each"]  # partial UTF-8 -> U+FFFD


def test_constants(tokenizer):
    assert tokenizer.vocab_size == FIXTURE["vocab_size"] == 1000
    assert tokenizer.eot_token_id == tokenizer.sot_token_id == EOT == 999
    assert tokenizer.pad_id == 0 and tokenizer.special_ids == (0, EOT)
    assert tokenizer.encode("!") == [0]  # pad 0 is also a real token
    assert tokenizer.encode("<|endoftext|>") == [EOT] and tokenizer.decode([EOT]) == "<|endoftext|>"
    assert tokenizer.decode([65, tokenizer.vocab_size + 5, 66]) == "bc"  # ids outside vocab.json: nothing


def test_call_layout_and_truncation():
    tokenizer = Gpt2Tokenizer(VOCAB_DIR, context_length=16)
    short = tokenizer.encode("a photo of a cat")
    long = tokenizer.encode(" ".join(["word"] * 30))
    assert len(short) <= 14 < len(long)
    tokens = tokenizer(["a photo of a cat", " ".join(["word"] * 30), ""])
    assert tokens.shape == (3, 16) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[0], [EOT, *short, EOT, *[0] * (14 - len(short))])
    np.testing.assert_array_equal(tokens[1], [EOT, *long[:14], EOT])  # cut, EOT written over the last id
    np.testing.assert_array_equal(tokens[2], [EOT, EOT, *[0] * 14])
    assert tokenizer("a photo of a cat").shape == (1, 16)
    np.testing.assert_array_equal(Gpt2Tokenizer(VOCAB_DIR, context_length=1)("a cat"), [[EOT]])


def test_batch_equals_single_rows(tokenizer):
    texts = [c["text"] for c in CASES]
    tokens = tokenizer(texts)
    assert tokens.shape == (len(texts), 64) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens, np.concatenate([tokenizer(t) for t in texts]))


def test_get_tokenizer():
    tokenizer = get_tokenizer("gpt2:" + VOCAB_DIR, 16)
    assert isinstance(tokenizer, Gpt2Tokenizer) and tokenizer.context_length == 16
    assert tokenizer("a cat").shape == (1, 16)
    with pytest.raises(ValueError, match="gpt2:"):
        get_tokenizer("gpt2:", 16)


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_missing_file(tmp_path, missing):
    for name in ("vocab.json", "merges.txt"):
        if name != missing:
            shutil.copy(os.path.join(VOCAB_DIR, name), tmp_path / name)
    with pytest.raises(FileNotFoundError, match=missing):
        Gpt2Tokenizer(str(tmp_path), 16)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        get_tokenizer(f"gpt2:{tmp_path}/no_such_dir", 16)


def test_caption_lm_configs_take_it_and_the_pipeline_writes_its_rows():
    """loss causal_lm / limber accept "gpt2:DIR" (its EOT is the prompt), and the input pipeline's caption rows
    are the tokenizer's: [EOT, ids, EOT, 0, ...]."""
    from clip_jax.config import default_config
    from clip_jax.config.validation import validate
    from clip_jax.data import Pipeline
    from clip_jax.evaluation import tokenize_caption
    from clip_jax.evaluation.caption_eval import row_text

    config = default_config()
    config.loss, config.lm.name, config.data.tokenizer = "causal_lm", "gpt2-tiny", "gpt2:" + VOCAB_DIR
    validate(config)
    pipeline = Pipeline("shapes:val#n=4&size=16", training=False, batch_size=4, image_size=16,
                        tokenizer=config.data.tokenizer, context_length=24)
    batch = next(iter(pipeline.iterator()))
    tokenizer = get_tokenizer(config.data.tokenizer, 24)
    assert (batch["tokens"][:, 0] == EOT).all()
    for row in batch["tokens"]:
        text = row_text(row, tokenizer)
        np.testing.assert_array_equal(row, tokenizer(text)[0])
        assert set(tokenize_caption(text)) & {"red", "green", "blue", "yellow", "purple", "orange"}, text  # every caption names one
