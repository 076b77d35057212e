"""DeCLIP's training-only heads (Li et al. 2021): SimSiam on image features, a masked-LM vocabulary head.

    projector: features [B, E] -> z [B, P]   Linear, BN, ReLU, Linear, BN, ReLU, Linear, BN (SimSiam's f)
    predictor: z [B, P] -> p [B, P]          Linear to P/2, BN, ReLU, Linear (SimSiam's bottleneck h)
    vocabulary: token features [B, K, W] -> logits [B, K, V]

Widths as DeCLIP's code (projection 1024, prediction bottleneck 512). The heads
sit beside the towers under the model's `heads` parameters; evaluation and
`encode_image` / `encode_text` never use them. BatchNorm statistics are those of
the global batch under a sharded jit.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.layers import Dtype, dense
from clip_jax.models.resnet import batch_norm


class Projector(nn.Module):
    """SimSiam's projection MLP: [B, E] -> [B, width], three linear layers each followed by BatchNorm."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
        x = features.astype(self.dtype)
        for i, axes in enumerate((("joint_embed", "mlp"), ("mlp", "embed"), ("embed", "joint_embed"))):
            x = dense(self.width, axes, f"fc{i + 1}", self.dtype)(x)
            x = batch_norm(train, self.dtype, f"bn{i + 1}", axis_name=axes[1])(x)
            if i < 2:
                x = nn.relu(x)
        return x.astype(jnp.float32)


class Predictor(nn.Module):
    """SimSiam's bottleneck prediction MLP: [B, width] -> [B, width] through width / 2 units."""

    width: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        h = dense(self.width // 2, ("joint_embed", "mlp"), "fc1", self.dtype)(z.astype(self.dtype))
        h = nn.relu(batch_norm(train, self.dtype, "bn1", axis_name="mlp")(h))
        return dense(self.width, ("mlp", "joint_embed"), "fc2", self.dtype)(h).astype(jnp.float32)


class DeclipHeads(nn.Module):
    """The projector and predictor of image self-supervision and the vocabulary head of text self-supervision."""

    projection_dim: int
    vocab_size: int
    dtype: Dtype = jnp.float32

    def setup(self) -> None:
        self.projector = Projector(self.projection_dim, self.dtype)
        self.predictor = Predictor(self.projection_dim, self.dtype)
        self.vocabulary = dense(self.vocab_size, ("embed", "vocab"), "vocabulary", self.dtype)

    def simsiam(self, features: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Image features [B, E] -> (p, z), each [B, projection_dim] float32, unnormalized."""
        z = self.projector(features, train=train)
        return self.predictor(z, train=train), z

    def token_logits(self, token_features: jax.Array) -> jax.Array:
        """[B, K, W] -> float32 logits over the vocabulary [B, K, V]."""
        return self.vocabulary(token_features.astype(self.dtype)).astype(jnp.float32)
