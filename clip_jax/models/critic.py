"""CLIP-Lite's critic heads (Shrivastava et al. 2021): one per modality, on top of the tower's output.

    features [B, E] -> MLP(features) + shortcut(features) -> LayerNorm -> [B, D]

MLP: linear E -> D (no bias), BatchNorm, ReLU, linear D -> D; shortcut: linear
E -> D initialised as a noisy identity (U(-0.01, 0.01), ones on the diagonal),
as the paper's code (`MILinearBlock`, units 2048, with the block LayerNorm).
The critic's score of a pair is the dot product of the two L2-normalized head
outputs times the learned logit scale (`CLIP`). BatchNorm statistics are those
of the global batch under a sharded jit; inference uses the running averages.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import Dtype, LayerNorm, dense
from clip_jax.models.resnet import batch_norm


def noisy_identity(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """[in, out] kernel: U(-0.01, 0.01) with 1.0 at [i, i], so the head starts near a copy of its input."""
    kernel = jax.random.uniform(key, shape, dtype, -0.01, 0.01)
    diagonal = jnp.arange(min(shape))
    return kernel.at[diagonal, diagonal].set(1.0)


class Critic(nn.Module):
    """features [B, E] -> critic embeddings [B, output_dim] (unnormalized)."""

    output_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
        x = features.astype(self.dtype)
        h = dense(self.output_dim, ("joint_embed", "mlp"), "fc1", self.dtype, use_bias=False)(x)
        h = nn.relu(batch_norm(train, self.dtype, "bn", axis_name="mlp")(h))
        h = dense(self.output_dim, ("mlp", "embed"), "fc2", self.dtype)(h)
        shortcut = dense(self.output_dim, ("joint_embed", "embed"), "shortcut", self.dtype, kernel_init=noisy_identity)(x)
        return LayerNorm(jnp.float32, name="ln")(h + shortcut)
