"""clip_jax.load and its encoders: open_clip's outputs from its own weights, and the zero-shot classifier."""
import os

import numpy as np
import pytest

import clip_jax
from clip_jax.evaluation import get_templates
from clip_jax.weights import storage as weights
from preprocess_cases import photo
from test_parity import TOLERANCE, load_fixture

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "vit_small.npz")


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(FIXTURE)  # (open_clip state dict, its inputs and outputs, the clip_jax model spec)


@pytest.fixture(scope="module")
def pretrained(fixture, tmp_path_factory):
    """The fixture's weights saved as a weights directory, loaded back with batches of at most 4."""
    state_dict, _, spec = fixture
    model = clip_jax.create_model(spec["name"], **spec["overrides"])
    variables = clip_jax.weights.open_clip.from_torch_state_dict(state_dict, model)
    directory = tmp_path_factory.mktemp("weights") / "vit_small"
    weights.save_variables(directory, variables, {"model": spec["name"], "overrides": spec["overrides"]})
    return clip_jax.load(str(directory), batch_size=4)


def _within_parity(ours, theirs):
    return np.abs(ours - theirs).max() <= TOLERANCE * max(1.0, np.abs(theirs).max())  # see test_parity


def test_encoders_reproduce_open_clip_in_padded_batches(pretrained, fixture):
    _, reference, _ = fixture
    images, tokens = reference["images"], reference["tokens"]  # 4 rows: one full batch
    for rows in (slice(None), slice(0, 3), slice(1, 2)):  # batches of 4, of 4 with a padded row, of 1
        assert _within_parity(pretrained.encode_image(images[rows]), reference["image_embeds"][rows])
        assert _within_parity(pretrained.encode_text(tokens[rows]), reference["text_embeds"][rows])
    five = np.concatenate([images, images[:1]])  # a full batch of 4, then one padded to a batch of 1
    assert _within_parity(pretrained.encode_image(five), np.concatenate([reference["image_embeds"], reference["image_embeds"][:1]]))
    normalized = pretrained.encode_image(images, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=-1), 1.0, rtol=1e-6)


def test_load_converts_a_torch_checkpoint_file(fixture, tmp_path):
    state_dict, reference, spec = fixture
    path = str(tmp_path / "open_clip_state_dict.npz")
    np.savez(path, **state_dict)
    converted = clip_jax.load(path, model=spec["name"], **spec["overrides"])
    assert _within_parity(converted.encode_text(reference["tokens"]), reference["text_embeds"])
    with pytest.raises(ValueError, match="model=NAME"):
        clip_jax.load(path)


def test_unpacks_as_model_variables_preprocess(pretrained):
    model, variables, preprocess = pretrained
    assert model is pretrained.model and variables is pretrained.variables
    image = preprocess(photo("chelsea"))
    assert image.shape == (32, 32, 3) and image.dtype == np.float32  # the model's image size
    np.testing.assert_array_equal(pretrained.encode_image([photo("chelsea")]), pretrained.encode_image(image[None]))


def test_strings_are_tokenized_with_the_model_context_length():
    clip = clip_jax.load("ViT-Tiny-8", text={"context_length": 16})
    texts = ["a photo of a cat", "a dog"]
    tokens = clip_jax.tokenizers.ClipTokenizer(16)(texts)
    np.testing.assert_array_equal(clip.encode_text(texts), clip.encode_text(tokens))


def _classifier_reference(pretrained, classnames, templates, images, bias=None):
    """OpenAI's recipe in NumPy float64 from the tower outputs: prompt embeddings, template mean, softmax."""
    prompts = [t.format(c) for c in classnames for t in templates]
    text = pretrained.encode_text(prompts).astype(np.float64)
    text /= np.linalg.norm(text, axis=-1, keepdims=True)
    classes = text.reshape(len(classnames), len(templates), -1).mean(axis=1)
    classes /= np.linalg.norm(classes, axis=-1, keepdims=True)
    image = pretrained.encode_image(images).astype(np.float64)
    image /= np.linalg.norm(image, axis=-1, keepdims=True)
    logits = np.exp(float(pretrained.variables["params"]["logit_scale"])) * image @ classes.T
    if bias is not None:
        return 1 / (1 + np.exp(-(logits + bias)))
    logits -= logits.max(axis=-1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)


IMAGES = np.random.default_rng(0).normal(size=(5, 32, 32, 3)).astype(np.float32)


def test_zero_shot_classifier_is_openais_recipe():
    clip = clip_jax.load("ViT-Tiny-8", batch_size=4)  # random weights with CLIP's whole vocabulary
    classnames = ["cat", "dog", "car"]
    templates = get_templates("openai_imagenet")[:5]
    probs = clip.zero_shot_classifier(classnames, templates)(IMAGES)
    assert probs.shape == (5, 3)
    # float32 embeddings (relative error ~1e-6) times a logit scale of 1 / 0.07 ~ 14: ~1e-4 in logits.
    np.testing.assert_allclose(probs, _classifier_reference(clip, classnames, templates, IMAGES), atol=1e-4)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-5)


def test_zero_shot_probabilities_of_a_sigmoid_model_use_its_bias():
    siglip = clip_jax.load("ViT-Tiny-8", init_logit_bias=-3.0, batch_size=4)
    images = IMAGES[:2]
    probs = siglip.zero_shot_classifier(["cat", "dog"], "simple")(images)
    expected = _classifier_reference(siglip, ["cat", "dog"], ["a photo of a {}."], images, bias=-3.0)
    np.testing.assert_allclose(probs, expected, atol=1e-4)  # as above
    assert not np.allclose(probs.sum(axis=-1), 1.0)  # independent per class


def test_load_names_what_is_wrong(tmp_path, pretrained):
    with pytest.raises(ValueError, match="vocabulary of 512"):
        pretrained.encode_text(["a word beyond a 512-token vocabulary"])
    with pytest.raises(ValueError, match="ViT-B-32"):
        clip_jax.load("ViT-Nonexistent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        clip_jax.load(str(empty))
