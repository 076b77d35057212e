"""transformers CLIPModel / SiglipModel checkpoints in and out (clip_jax.weights.hf_clip, weights.sources).

Fixtures (tests/fixtures/make_hf_clip_fixtures.py, transformers 5.25 with random weights, every constant
perturbed): `hf_clip_tiny/`, `hf_siglip_tiny/` (save_pretrained directories) with transformers' own
embeddings in `hf_{clip,siglip}_tiny.npz`, and the key/shape lists of ViT-B/32 and SigLIP B/16 in
`hf_clip_full_size.json`. Neither torch nor transformers is needed, except by the tests marked
`transformers` (`pytest -m transformers tests/test_hf_clip.py`): the live round trip.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import clip_jax
from clip_jax import export_weights, import_weights
from clip_jax.models.architectures import MODEL_SPECS, model_from_spec, model_spec
from clip_jax.tokenizers import ClipTokenizer, get_tokenizer
from clip_jax.weights import hf_clip, sources, torch_layout
from clip_jax.weights.into_state import load_into_state
from clip_jax.weights.storage import save_variables

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FAMILIES = ["clip", "siglip"]
# float32 through different kernels (XLA's vs torch's matmuls, erf, softmax): 1e-5 of the output's scale is
# about 100 float32 roundings of it; the fixtures agree to ~5e-7.
TOLERANCE = 1e-5


def fixture_dir(family):
    return os.path.join(FIXTURES, f"hf_{family}_tiny")


def reference(family):
    return np.load(os.path.join(FIXTURES, f"hf_{family}_tiny.npz"))


def assert_close_to_scale(actual, expected):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * scale)


def assert_embeddings_equal_transformers(clip, ref):
    assert_close_to_scale(clip.encode_image(ref["__images"]), ref["__image_embeds"])
    assert_close_to_scale(clip.encode_text(ref["__tokens"]), ref["__text_embeds"])


@pytest.mark.parametrize("family,scan_layers", [("clip", False), ("siglip", False), ("siglip", True)])
def test_load_gives_transformers_embeddings(family, scan_layers):
    """clip_jax.load(DIR) builds the model from config.json alone and embeds as transformers does, in either
    layer layout."""
    clip = clip_jax.load(fixture_dir(family), dtype="float32", scan_layers=scan_layers)
    assert_embeddings_equal_transformers(clip, reference(family))
    logits = clip.model.apply(clip.variables, reference(family)["__images"], reference(family)["__tokens"])
    per_image = logits["logit_scale"] * logits["image_embeds"] @ logits["text_embeds"].T
    if family == "siglip":
        per_image = per_image + clip.variables["params"]["logit_bias"]
    assert_close_to_scale(np.asarray(per_image), reference(family)["__logits_per_image"])


@pytest.mark.parametrize("family", FAMILIES)
def test_config_fields_are_read_and_written_back(family):
    """Every size field of the fixture's config.json, each away from transformers' default, lands in the
    spec, and config_from_spec writes each back (the towers' projection_dim, which CLIPModel does not read,
    and the pad and start ids, which no embedding depends on, aside)."""
    with open(os.path.join(fixture_dir(family), "config.json")) as f:
        config = json.load(f)
    spec = hf_clip.spec_from_config(config)
    assert spec.vision.width == 48 and spec.vision.head_width == 16 and int(48 * spec.vision.mlp_ratio) == 72
    assert spec.text.width == 32 and spec.text.heads == 4 and int(32 * spec.text.mlp_ratio) == 40
    assert (spec.vision.ln_eps, spec.text.ln_eps) == (1e-4, 1e-3)
    assert (spec.vision.image_size, spec.vision.patch_size, spec.text.context_length, spec.text.vocab_size) == (32, 8, 12, 96)
    assert spec.activation == {"clip": "gelu", "siglip": "gelu_tanh"}[family]
    written = hf_clip.config_from_spec(spec, family, **hf_clip.token_ids(spec, family))
    for tower in ("vision_config", "text_config"):
        for field, value in written[tower].items():
            if field in config[tower] and field not in ("projection_dim", "pad_token_id", "bos_token_id"):
                assert config[tower][field] == value, (tower, field)
    assert hf_clip.spec_from_config(written) == spec


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trip_is_exact(family):
    config, state_dict = hf_clip.read_pretrained(fixture_dir(family))
    model = model_from_spec(hf_clip.spec_from_config(config))
    back = hf_clip.to_transformers(hf_clip.from_transformers(state_dict, model), model)
    assert set(back) == set(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_sharded_checkpoint_reads_like_one_file(tmp_path):
    """A model.safetensors.index.json and its shards, as save_pretrained writes a large model."""
    state_dict = load_file(os.path.join(fixture_dir("siglip"), "model.safetensors"))
    keys = sorted(state_dict)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({k: state_dict[k] for k in names}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(os.path.join(fixture_dir("siglip"), "config.json"), tmp_path)
    _, read = hf_clip.read_pretrained(tmp_path)
    assert set(read) == set(state_dict)
    for key in keys:
        np.testing.assert_array_equal(read[key], state_dict[key])
    os.remove(tmp_path / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        hf_clip.read_pretrained(tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_size_key_lists(family):
    """ViT-B/32's and SigLIP B/16's config.json give a clip_jax model whose export has exactly transformers'
    keys and shapes (shapes only: jax.eval_shape)."""
    with open(os.path.join(FIXTURES, "hf_clip_full_size.json")) as f:
        recorded = json.load(f)[family]
    spec = hf_clip.spec_from_config(recorded["config"])
    model = model_from_spec(spec)
    expected = torch_layout.expected_variables(model)
    shapes = jax.eval_shape(lambda v: hf_clip.to_transformers(v, model, None), expected)
    assert {k: list(v.shape) for k, v in shapes.items()} == {
        k: v for k, v in recorded["state_dict"].items() if not k.endswith("position_ids")
    }
    if family == "clip":  # OpenAI's ViT-B/32 is clip_jax's ViT-B-32-quickgelu
        assert spec == dataclasses.replace(MODEL_SPECS["ViT-B-32-quickgelu"], init_logit_scale=2.6592)


def test_config_defaults_are_transformers_defaults():
    with open(os.path.join(FIXTURES, "hf_clip_full_size.json")) as f:
        defaults = json.load(f)["defaults"]
    for family, towers in hf_clip.CONFIG_DEFAULTS.items():
        for tower, fields in towers.items():
            recorded = defaults[family] if tower == "model" else defaults[family][tower]
            for field, value in fields.items():
                if value is None:  # SigLIP's projection_size: transformers resolves None to the hidden size
                    value = recorded["hidden_size"]
                assert recorded.get(field) == value, (family, tower, field)


def test_metadata_rebuilds_the_model():
    config, _ = hf_clip.read_pretrained(fixture_dir("siglip"))
    spec = hf_clip.spec_from_config(config)
    metadata = json.loads(json.dumps(sources.spec_metadata(spec, "siglip")))  # through JSON, as saved
    assert model_spec(metadata["model"], **metadata["overrides"]) == spec


@pytest.mark.parametrize(
    "field,value,message",
    [
        (("vision_config", "hidden_act"), "relu", "vision_config.hidden_act = 'relu'"),
        (("text_config", "hidden_act"), "quick_gelu", "the towers' hidden_act differ"),
        (("vision_config", "image_size"), [32, 48], "vision_config.image_size = \\[32, 48\\]"),
        (("vision_config", "vision_use_head"), False, "vision_use_head"),
        (("text_config", "projection_size"), 40, "text_config.projection_size = 40"),
        (("model_type",), "siglip2", "model_type 'siglip2'"),
    ],
)
def test_config_misfits_name_the_field(field, value, message):
    with open(os.path.join(fixture_dir("siglip"), "config.json")) as f:
        config = json.load(f)
    target = config
    for part in field[:-1]:
        target = target[part]
    target[field[-1]] = value
    with pytest.raises(torch_layout.ConversionError, match=message):
        hf_clip.spec_from_config(config)


def test_state_dict_misfits_name_the_key():
    config, state_dict = hf_clip.read_pretrained(fixture_dir("clip"))
    model = model_from_spec(hf_clip.spec_from_config(config))
    state_dict = dict(state_dict)
    state_dict["extra.weight"] = state_dict.pop("vision_model.post_layernorm.weight")
    with pytest.raises(torch_layout.ConversionError, match=r"(?s)vision_model\.post_layernorm\.weight.*extra\.weight"):
        hf_clip.from_transformers(state_dict, model)


@pytest.mark.parametrize(
    "name,overrides,part",
    [
        ("RN-Tiny", {}, "ModifiedResNet"),
        ("ViT-Tiny-8", {"critic_dim": 16}, "image_critic, text_critic"),
        ("ViT-Tiny-8", {"declip_projection_dim": 16}, "heads"),
        ("ViT-Tiny-8", {"init_logit_bias": -10.0}, "a logit bias, which CLIPModel lacks"),
        ("ViT-SO400M-14-SigLIP", {"init_logit_bias": None}, "no logit bias, which SiglipModel needs"),
        ("ViT-Tiny-8", {"text": {"causal": False}}, "'causal': False"),
    ],
)
def test_parts_transformers_lacks_are_named(name, overrides, part):
    with pytest.raises(hf_clip.UnsupportedPart, match=part):
        hf_clip.family_of_model(clip_jax.create_model(name, **overrides))


def test_export_of_a_part_transformers_lacks_ends_in_one_line(tmp_path, capsys):
    # the model is read from the metadata and refused before any tensor is converted: any variables will do
    save_variables(tmp_path / "weights", {"params": {"logit_scale": np.zeros((), np.float32)}}, {"model": "RN-Tiny"})
    with pytest.raises(SystemExit) as exit_info:
        export_weights.main([str(tmp_path / "weights"), str(tmp_path / "out"), "--format", "transformers"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "ModifiedResNet" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_import_then_export_gives_back_the_checkpoint(tmp_path, family):
    """import_weights --checkpoint DIR, then export_weights --format transformers: the same tensors bit for bit,
    and a config.json that builds the same model; the imported weights embed as transformers does."""
    source = tmp_path / "source"
    shutil.copytree(fixture_dir(family), source)
    shutil.copytree(os.path.join(FIXTURES, "hf_siglip_tokenizer"), source, dirs_exist_ok=True)
    import_weights.main(["--checkpoint", str(source), "--output", str(tmp_path / "imported")])
    assert (tmp_path / "imported" / sources.TOKENIZER_FOLDER / "spiece.model").is_file()
    clip = clip_jax.load(str(tmp_path / "imported"), dtype="float32")
    assert_embeddings_equal_transformers(clip, reference(family))
    texts = ["a photo of a cat.", "Two DOGS!"]
    np.testing.assert_array_equal(clip.tokenizer(texts), get_tokenizer(f"hf:{source}", 12)(texts))

    export_weights.main([str(tmp_path / "imported"), str(tmp_path / "exported"), "--format", "transformers"])
    config, state_dict = hf_clip.read_pretrained(tmp_path / "exported")
    _, original = hf_clip.read_pretrained(fixture_dir(family))
    assert set(state_dict) == set(original)
    for key, value in original.items():
        np.testing.assert_array_equal(state_dict[key], value, err_msg=key)
    with open(os.path.join(fixture_dir(family), "config.json")) as f:
        assert hf_clip.spec_from_config(config) == hf_clip.spec_from_config(json.load(f))
    assert (tmp_path / "exported" / "spiece.model").is_file()


def test_export_of_a_clip_jax_model_writes_clip_tokenizer_files(tmp_path):
    """A model trained with CLIP's BPE goes out with CLIP's tokenizer files, and comes back the same."""
    model = clip_jax.create_model("ViT-Tiny-8", text={"context_length": 16, "vocab_size": 49408})
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16), jnp.int32))
    overrides = {"text": {"context_length": 16, "vocab_size": 49408}}
    save_variables(tmp_path / "weights", nn.meta.unbox(jax.device_get(variables)), {"model": "ViT-Tiny-8", "overrides": overrides})
    export_weights.main([str(tmp_path / "weights"), str(tmp_path / "out"), "--format", "transformers"])
    assert {"vocab.json", "merges.txt", "config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "out"))
    back = clip_jax.load(str(tmp_path / "out"), dtype="float32")
    assert isinstance(back.tokenizer, ClipTokenizer)
    mine = clip_jax.load(str(tmp_path / "weights"), dtype="float32")
    texts = ["a diagram", "a photo of a dog"]
    np.testing.assert_array_equal(back.encode_text(texts), mine.encode_text(texts))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(back.encode_image(images), mine.encode_image(images))


def test_init_from_a_transformers_directory():
    """--config.init_from=DIR: the train state's parameters become the checkpoint's."""
    config, state_dict = hf_clip.read_pretrained(fixture_dir("siglip"))
    model = model_from_spec(hf_clip.spec_from_config(config))
    start = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 12), jnp.int32))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = {"params": nn.meta.unbox(start["params"]), "batch_stats": {}}
    shardings = jax.tree.map(lambda _: device, state)
    state = load_into_state(fixture_dir("siglip"), state, shardings)
    expected = hf_clip.from_transformers(state_dict, model)["params"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), expected)


def test_a_hub_id_is_not_downloaded():
    with pytest.raises(FileNotFoundError, match="downloads nothing.*huggingface-cli download openai/clip-vit-base-patch32"):
        clip_jax.load("openai/clip-vit-base-patch32")


# --- With torch and transformers installed: pytest -m transformers tests/test_hf_clip.py --------------


@pytest.mark.transformers
@pytest.mark.parametrize("family", FAMILIES)
def test_live_round_trip_through_transformers(tmp_path, family):
    """transformers -> clip_jax -> transformers: the exported directory loads with from_pretrained and its
    embeddings equal clip_jax's to 1e-5 of their scale (clip_jax's equal the source model's:
    test_load_gives_transformers_embeddings)."""
    script = f"""
import sys, numpy as np, torch, transformers
cls = transformers.{hf_clip.ARCHITECTURES[family]}
ref = np.load({os.path.join(FIXTURES, f"hf_{family}_tiny.npz")!r})
model = cls.from_pretrained(sys.argv[1], attn_implementation="eager").eval()
with torch.no_grad():
    image = model.get_image_features(pixel_values=torch.from_numpy(ref["__images"].transpose(0, 3, 1, 2).copy()))
    text = model.get_text_features(input_ids=torch.from_numpy(ref["__tokens"].astype(np.int64)))
image, text = (getattr(x, "pooler_output", x).numpy() for x in (image, text))
np.savez(sys.argv[2], image=image, text=text)
"""
    clip = clip_jax.load(fixture_dir(family), dtype="float32")
    export_weights.main([fixture_dir(family), str(tmp_path / "out"), "--format", "transformers"])
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "out"), str(tmp_path / "emb.npz")], check=True)
    emb = np.load(tmp_path / "emb.npz")
    ref = reference(family)
    assert_close_to_scale(emb["image"], clip.encode_image(ref["__images"]))
    assert_close_to_scale(emb["text"], clip.encode_text(ref["__tokens"]))
