"""CLIP-Lite's critic heads: the paper's initialisation, BatchNorm statistics of the global batch.

The loss itself (both negative choices, 1 and 8 devices, values and gradients) is in
tests/test_losses.py; the sharded train step with critics against one device in tests/test_train_step.py;
runs through main, and resume with the critics' statistics, in tests/integration/test_recipes.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from clip_jax.models import create_model
from clip_jax.models.critic import Critic
from clip_jax.runtime import sharding

TINY = dict(embed_dim=32, vision=dict(width=64, layers=1, head_width=32), text=dict(width=64, heads=2, layers=1))


def test_critic_starts_near_a_copy_of_its_input():
    """The paper's shortcut init: U(-0.01, 0.01) with ones on the diagonal; BatchNorm over the hidden units."""
    critic = Critic(output_dim=48)
    variables = critic.init(jax.random.key(0), jnp.zeros((2, 32)))
    kernel = np.asarray(variables["params"]["shortcut"]["kernel"].unbox())
    assert kernel.shape == (32, 48)
    np.testing.assert_array_equal(np.diag(kernel), np.ones(32))
    off_diagonal = kernel[~np.eye(32, 48, dtype=bool)]
    assert np.abs(off_diagonal).max() <= 0.01 and off_diagonal.std() > 0.004  # uniform on [-0.01, 0.01]: std 0.0058
    assert "bias" not in variables["params"]["fc1"]  # BatchNorm follows
    assert jax.tree.map(jnp.shape, variables["batch_stats"]) == {"bn": {"mean": (48,), "var": (48,)}}


def test_critic_batchnorm_statistics_are_the_global_batch():
    """On 8 devices the running statistics move by the whole batch's moments, as on one device (numpy reference)."""
    model = create_model("ViT-Tiny-8", critic_dim=16, **TINY)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
    tokens = rng.integers(1, 400, size=(32, 77)).astype(np.int32)
    variables = jax.jit(model.init)(jax.random.key(1), images[:1], tokens[:1])

    def forward(variables, images, tokens):
        return model.apply(variables, images, tokens, train=True, mutable=["batch_stats"])

    mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    batch = sharding.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    sharded = jax.jit(forward, in_shardings=(replicated, batch, batch))(variables, images, tokens)
    single = jax.jit(forward)(variables, images, tokens)
    features = np.asarray(model.apply(variables, images, method=lambda m, x: m.visual(x)), np.float64)
    hidden = features @ np.asarray(variables["params"]["image_critic"]["fc1"]["kernel"].unbox(), np.float64)
    stats = sharded[1]["batch_stats"]["image_critic"]["bn"]
    # torch momentum 0.1 from mean 0 and variance 1; float32 sums over 32 rows of 64 products
    np.testing.assert_allclose(stats["mean"], 0.1 * hidden.mean(axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * hidden.var(axis=0), rtol=1e-5)
    # The outputs are unit vectors (entries ~0.2) and statistics; the batch moments are float32 sums over
    # 32 rows reduced in another order on 8 devices, and BatchNorm divides by the batch std, which
    # amplifies that rounding: 1e-5 of the unit norm (measured up to 1.6e-6).
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
