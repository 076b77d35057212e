"""clip_jax.lm: GPT-2 / GPT-J parity with transformers, KV-cache decoding, generation, soft prompts, FSDP.

Fixtures come from tests/fixtures/make_hf_lm_fixtures.py (transformers' tiny
GPT-2 and GPT-J with every tensor redrawn); no torch is needed here.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax import lm
from clip_jax.lm.presets import param_shapes
from clip_jax.runtime import sharding
from clip_jax.weights.hf_lm import from_hf_state_dict
from clip_jax.weights.torch_layout import ConversionError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FIXTURE_NAMES = {"gpt2-tiny": "hf_gpt2_tiny", "gpt-j-tiny": "hf_gptj_tiny"}
# float32 against transformers in float32: two libraries' kernels sum in different orders
# through 2 layers; measured at most 9.5e-6 on logits up to 17 (GPT-2) and 2.6e-6 on logits up
# to 4.7 (GPT-J), i.e. under 1e-6 of the output scale.
TOLERANCE = 1e-5


@functools.lru_cache(maxsize=None)
def load_fixture(name):
    with np.load(os.path.join(FIXTURES, f"{FIXTURE_NAMES[name]}.npz")) as data:
        arrays = dict(data)
    inputs = {k[2:]: arrays.pop(k) for k in list(arrays) if k.startswith("__")}
    spec = json.loads(str(inputs.pop("model")))
    return arrays, inputs, spec


@functools.lru_cache(maxsize=None)
def converted(name):
    """(model, variables) of a fixture's transformers model."""
    state_dict, _, spec = load_fixture(name)
    model = lm.create_lm(spec["name"], **spec["overrides"])
    return model, from_hf_state_dict(state_dict, model)


def max_error(actual, expected, valid=None):
    diff = np.abs(np.asarray(actual, np.float32) - np.asarray(expected, np.float32))
    return float((diff if valid is None else diff[valid]).max())


def scale(x):
    return TOLERANCE * max(1.0, float(np.abs(np.asarray(x)).max()))


@pytest.mark.parametrize("name", list(FIXTURE_NAMES))
def test_logits_match_transformers(name):
    model, variables = converted(name)
    _, ref, _ = load_fixture(name)
    valid = ref["attention_mask"].astype(bool)  # logits at padding positions are meaningless
    logits = model.apply(variables, ref["tokens"], ref["attention_mask"])  # default positions = HF's position_ids
    assert logits.dtype == jnp.float32 and logits.shape == ref["logits"].shape
    error = max_error(logits, ref["logits"], valid)
    print(f"{name}: max |diff| {error:.2e} (max |logit| {np.abs(ref['logits']).max():.1f})")
    assert error <= scale(ref["logits"]), error
    explicit = model.apply(variables, ref["tokens"], ref["attention_mask"], ref["position_ids"])
    assert max_error(explicit, ref["logits"], valid) <= scale(ref["logits"])


@pytest.mark.parametrize("name", list(FIXTURE_NAMES))
def test_kv_cache_decoding_equals_full_forward(name):
    model, variables = converted(name)
    _, ref, _ = load_fixture(name)
    tokens, mask = ref["tokens"], ref["attention_mask"]
    full = model.apply(variables, tokens, mask)
    decode = jax.jit(lambda e, c, m: model.apply(variables, e, c, m, method=model.decode))
    embeds = model.apply(variables, tokens, method=model.embed)
    for prefill in (1, 5):  # token by token from an empty cache; a 5-token prompt then single steps
        cache = model.init_cache(tokens.shape[0], tokens.shape[1])
        logits, cache = decode(embeds[:, :prefill], cache, mask[:, :prefill])
        steps = [logits]
        for i in range(prefill, tokens.shape[1]):
            logits, cache = decode(embeds[:, i : i + 1], cache, mask[:, i : i + 1])
            steps.append(logits)
        assert int(cache.index) == tokens.shape[1]
        error = max_error(jnp.concatenate(steps, axis=1), full, mask.astype(bool))
        print(f"{name}, prefill {prefill}: cached vs full max |diff| {error:.2e}")
        assert error <= scale(full), error


def stepwise_argmax(model, variables, tokens, steps):
    """Greedy decoding by re-running the full forward (no cache) after each new token.

    The sequence lives in a fixed-length buffer (one compilation): causal logits at
    position t do not depend on the zeros after it.
    """
    length = tokens.shape[1]
    buffer = jnp.pad(tokens, ((0, 0), (0, steps)))
    forward = jax.jit(lambda t: model.apply(variables, t))
    for t in range(length, length + steps):
        buffer = buffer.at[:, t].set(jnp.argmax(forward(buffer)[:, t - 1], axis=-1).astype(jnp.int32))
    return buffer


@pytest.mark.parametrize("name", list(FIXTURE_NAMES))
def test_greedy_decode_equals_stepwise_argmax(name):
    model, variables = converted(name)
    prompt = jnp.asarray(load_fixture(name)[1]["tokens"][:1, :6].repeat(2, 0))
    prompt = prompt.at[1].set(prompt[1, ::-1])
    expected = stepwise_argmax(model, variables, prompt, 10)[:, 6:]
    np.testing.assert_array_equal(lm.greedy_decode(model, variables, prompt, max_new_tokens=10), expected)
    # Left padding: prompts of lengths 6 and 3 in one batch give what each gives alone.
    padded = prompt.at[1, :3].set(0)
    mask = jnp.ones_like(padded).at[1, :3].set(0)
    short = stepwise_argmax(model, variables, prompt[1:, 3:], 10)[:, 3:]
    batched = lm.greedy_decode(model, variables, padded, mask, max_new_tokens=10)
    np.testing.assert_array_equal(batched, jnp.concatenate([expected[:1], short]))


def test_top_k_sampling_and_eos():
    model, variables = converted("gpt-j-tiny")
    prompt = jnp.asarray(load_fixture("gpt-j-tiny")[1]["tokens"][:1, :4])
    greedy = lm.greedy_decode(model, variables, prompt, max_new_tokens=6)
    top1 = lm.generate(model, variables, prompt, max_new_tokens=6, top_k=1, rng=jax.random.key(1))
    np.testing.assert_array_equal(top1, greedy)
    sampled = lm.generate(model, variables, prompt, max_new_tokens=6, top_k=5, rng=jax.random.key(2))
    logits = model.apply(variables, jnp.concatenate([prompt, sampled], axis=1))[:, 3:-1]  # predicting each new token
    ranks = (logits > jnp.take_along_axis(logits, sampled[..., None], axis=-1)).sum(-1)
    assert int(ranks.max()) < 5, ranks
    eos = int(greedy[0, 2])
    stopped = lm.greedy_decode(model, variables, prompt, max_new_tokens=6, eos_id=eos, pad_id=-1)
    first_eos = int(np.argmax(np.asarray(greedy[0]) == eos))
    np.testing.assert_array_equal(stopped[0, : first_eos + 1], greedy[0, : first_eos + 1])
    assert (stopped[0, first_eos + 1 :] == -1).all()
    with pytest.raises(ValueError, match="rng"):
        lm.generate(model, variables, prompt, max_new_tokens=2, top_k=5)


@pytest.mark.parametrize("name", list(FIXTURE_NAMES))
def test_soft_prompt_prefix(name):
    """LiMBeR: inputs_embeds = concat(prefix [B, k, D], embed(tokens))."""
    model, variables = converted(name)
    tokens = jnp.asarray(load_fixture(name)[1]["tokens"][:1])  # [1, 12]
    prefix_tokens, text = tokens[:, :4], tokens[:, 4:]
    prefix = model.apply(variables, prefix_tokens, method=model.embed)  # a prefix that equals real tokens
    embeds = jnp.concatenate([prefix, model.apply(variables, text, method=model.embed)], axis=1)
    logits = model.apply(variables, embeds, method=model.forward)
    assert max_error(logits, model.apply(variables, tokens)) <= scale(logits)
    np.testing.assert_array_equal(
        lm.greedy_decode(model, variables, embeds, max_new_tokens=4),
        lm.greedy_decode(model, variables, tokens, max_new_tokens=4),
    )

    def loss(prefix):  # a trained prefix gets gradients through the frozen LM
        x = jnp.concatenate([prefix, embeds[:, 4:]], axis=1)
        logp = jax.nn.log_softmax(model.apply(variables, x, method=model.forward)[:, 3:-1])
        return -jnp.take_along_axis(logp, text[..., None], axis=-1).mean()

    soft = jax.random.normal(jax.random.key(0), prefix.shape)
    grad = jax.jit(jax.grad(loss))(soft)
    assert grad.shape == soft.shape and bool(jnp.isfinite(grad).all()) and float(jnp.abs(grad).max()) > 0


def test_parameter_counts_equal_transformers():
    with open(os.path.join(FIXTURES, "hf_lm_param_counts.json")) as f:
        recorded = json.load(f)["params"]
    assert set(recorded) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt-j-6b"}
    counts = {name: lm.count_params(lm.create_lm(name)) for name in recorded}
    assert counts == recorded
    assert counts["gpt2"] == 124_439_808 and counts["gpt-j-6b"] == 6_050_882_784


def test_interface_and_options():
    model = lm.create_lm("gpt2-tiny")
    assert isinstance(model, lm.CausalLanguageModel)
    cache = model.init_cache(2, 16)
    assert cache.max_length == 16 and len(cache.keys) == model.config.layers
    assert cache.keys[0].shape == (2, 16, 4, 16)
    with pytest.raises(ValueError, match="max_positions"):
        model.init_cache(1, 33)
    with pytest.raises(ValueError, match="unknown LM override"):
        lm.create_lm("gpt2", widht=3)
    with pytest.raises(ValueError, match="rotary_dim"):
        lm.create_lm("gpt-j-tiny", rotary_dim=7)
    base, variables = converted("gpt2-tiny")
    tokens = load_fixture("gpt2-tiny")[1]["tokens"]
    logits = base.apply(variables, tokens)
    remat = lm.create_lm("gpt2-tiny", remat_policy="full")
    assert max_error(remat.apply(variables, tokens), logits) <= scale(logits)
    bf16 = lm.create_lm("gpt2-tiny", dtype="bfloat16").apply(variables, tokens)
    assert bf16.dtype == jnp.float32 and max_error(bf16, logits) < 0.05 * float(np.abs(logits).max())


def test_converter_accepts_prefixless_keys():
    state_dict, _, _ = load_fixture("gpt2-tiny")
    model, variables = converted("gpt2-tiny")
    bare = {k.removeprefix("transformer."): v for k, v in state_dict.items() if k != "lm_head.weight"}
    again = from_hf_state_dict(bare, model)
    jax.tree.map(np.testing.assert_array_equal, again, variables)


def test_converter_names_bad_keys():
    state_dict, _, _ = load_fixture("gpt2-tiny")
    model = lm.create_lm("gpt2-tiny")
    broken = dict(state_dict)
    del broken["transformer.h.1.ln_2.bias"]
    broken["transformer.h.0.attn.extra"] = np.zeros(3, np.float32)
    broken["transformer.h.0.mlp.c_fc.weight"] = np.zeros((64, 100), np.float32)
    broken["transformer.h.0.attn.bias"] = np.zeros((1, 1, 32, 32), np.float32)  # old mask buffer: ignored
    with pytest.raises(ConversionError) as error:
        from_hf_state_dict(broken, model)
    message = str(error.value)
    assert "transformer.h.1.ln_2.bias" in message and "transformer.h.0.attn.extra" in message
    assert "transformer.h.0.mlp.c_fc.weight: shape (64, 100)" in message
    assert "attn.bias'" not in message
    untied = {**state_dict, "lm_head.weight": state_dict["lm_head.weight"] + 1}
    with pytest.raises(ConversionError, match="tie_embeddings=False"):
        from_hf_state_dict(untied, model)
    gptj_state_dict, _, _ = load_fixture("gpt-j-tiny")
    with pytest.raises(ConversionError) as error:  # a GPT-J checkpoint in a GPT-2 model
        from_hf_state_dict(gptj_state_dict, model)
    assert "transformer.wpe.weight" in str(error.value) and "lm_head.bias" in str(error.value)
    with pytest.raises(ConversionError, match="not a GPT-2 or GPT-J"):
        from_hf_state_dict({"foo.weight": np.zeros(2)}, model)


def test_fsdp_sharded_forward_equals_unsharded():
    model, variables = converted("gpt-j-tiny")
    _, ref, _ = load_fixture("gpt-j-tiny")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
    shardings = {"params": sharding.logical_shardings(param_shapes(model), mesh)}
    assert shardings["params"]["wte"]["embedding"].spec == jax.sharding.PartitionSpec(None, "fsdp")
    assert shardings["params"]["h_0"]["attn"]["query"]["kernel"].spec[0] == "fsdp"
    placed = jax.device_put(variables, shardings)
    assert len(placed["params"]["h_0"]["mlp"]["fc_in"]["kernel"].addressable_shards[0].data.shape) == 2
    assert placed["params"]["h_0"]["mlp"]["fc_in"]["kernel"].addressable_shards[0].data.shape[0] == 8
    tokens = jax.device_put(ref["tokens"][:1].repeat(8, 0), sharding.batch_sharding(mesh))
    mask = jax.device_put(ref["attention_mask"][:1].repeat(8, 0), sharding.batch_sharding(mesh))
    forward = jax.jit(lambda v, t, m: model.apply(v, t, m))
    sharded = forward(placed, tokens, mask)
    unsharded = model.apply(variables, np.asarray(tokens), np.asarray(mask))
    error = max_error(sharded, unsharded)
    print(f"fsdp 8 vs unsharded max |diff| {error:.2e}")
    assert error <= scale(unsharded), error


def test_import_weights_cli(tmp_path):
    from clip_jax import import_weights
    from clip_jax.weights.storage import load_variables

    state_dict, ref, _ = load_fixture("gpt-j-tiny")
    checkpoint = str(tmp_path / "gptj.npz")
    np.savez(checkpoint, **state_dict)
    import_weights.main(["--checkpoint", checkpoint, "--lm", "gpt-j-tiny", "--output", str(tmp_path / "out")])
    variables, metadata = load_variables(tmp_path / "out")
    assert lm.create_lm(metadata["model"], **metadata["overrides"]) == converted("gpt-j-tiny")[0]
    _, expected = converted("gpt-j-tiny")
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
