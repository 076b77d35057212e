"""OpenAI's ModifiedResNet image tower with attention pooling."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.conv import conv_general_dilated
from clip_jax.models.layers import Dtype, MultiHeadAttention, normal, param_with_axes, torch_default_kernel

BN_EPS = 1e-5
BN_MOMENTUM = 0.9  # torch momentum 0.1


def avg_pool(x: jax.Array, stride: int) -> jax.Array:
    """torch.nn.AvgPool2d(stride) on NHWC: [B, H, W, C] -> [B, H/s, W/s, C]."""
    return nn.avg_pool(x, (stride, stride), strides=(stride, stride)) if stride > 1 else x


def conv(features: int, kernel: int, stride: int, dtype: Dtype, name: str) -> nn.Conv:
    """A bias-free k x k convolution with torch's padding and init (kernel gradient: `models.conv`)."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(kernel // 2, kernel // 2)] * 2,
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=param_with_axes(torch_default_kernel(), (None, None, "conv_in", "conv_out")),
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def batch_norm(
    train: bool, dtype: Dtype, name: str, zero_init: bool = False, axis_name: str = "conv_out"
) -> nn.BatchNorm:
    """BatchNorm with torch's eps and momentum (running variance is the biased one).

    Under a sharded jit the statistics are those of the whole global batch (synchronised BatchNorm).
    `axis_name`: the logical axis of the normalised features.
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPS,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=param_with_axes(nn.initializers.zeros if zero_init else nn.initializers.ones, (axis_name,)),
        bias_init=param_with_axes(nn.initializers.zeros, (axis_name,)),
        name=name,
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> AvgPool(stride) -> 1x1 (x4), each with BN; ReLU; anti-aliased downsample.

    [B, H, W, C_in] -> [B, H/stride, W/stride, 4 planes]. bn3's gamma starts at zero.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        out_features = self.planes * 4
        h = nn.relu(batch_norm(train, self.dtype, "bn1")(conv(self.planes, 1, 1, self.dtype, "conv1")(x)))
        h = nn.relu(batch_norm(train, self.dtype, "bn2")(conv(self.planes, 3, 1, self.dtype, "conv2")(h)))
        h = avg_pool(h, self.stride)
        h = batch_norm(train, self.dtype, "bn3", zero_init=True)(conv(out_features, 1, 1, self.dtype, "conv3")(h))
        if self.stride > 1 or x.shape[-1] != out_features:
            x = avg_pool(x, self.stride)
            x = batch_norm(train, self.dtype, "downsample_bn")(conv(out_features, 1, 1, self.dtype, "downsample_conv")(x))
        return nn.relu(h + x)


class AttentionPool2d(nn.Module):
    """Attention pooling with the spatial mean as the only query.

    [B, H, W, C] -> [B, output_dim]: prepend the mean token, add positional
    embeddings ((HW + 1, C)), attend from the mean token, project to output_dim.
    """

    heads: int
    output_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, channels = x.shape
        std = channels**-0.5
        x = x.reshape(batch, height * width, channels)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)  # [B, HW + 1, C]
        positional_embedding = self.param(
            "positional_embedding",
            param_with_axes(normal(std), (None, "embed")),
            (height * width + 1, channels),
            jnp.float32,
        )
        x = x + positional_embedding.astype(x.dtype)
        pooled = MultiHeadAttention(
            self.heads, out_features=self.output_dim, qkv_std=std, out_std=std, dtype=self.dtype, name="attn"
        )(x[:, :1], x)  # [B, 1, output_dim]
        return pooled[:, 0]


class ModifiedResNet(nn.Module):
    """OpenAI's ResNet: 3-conv stem, AvgPool stride, attention pooling.

    images [B, H, W, 3] -> embeddings [B, output_dim] float32. BatchNorm uses
    batch statistics when `train` (call with mutable=['batch_stats']).
    With `grid=True` it returns the feature map that attention pooling would
    read, [B, H/32, W/32, 32 * width] float32 (RN50x16 at 384 px: 12 x 12 x
    3072), for LiMBeR's "grid" prefix. The default output is unchanged.
    """

    image_size: int
    layers: Sequence[int]
    width: int
    heads: int
    output_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, grid: bool = False) -> jax.Array:
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"expected images of {self.image_size}x{self.image_size}, got shape {images.shape}")
        x = images.astype(self.dtype)
        stem = ((self.width // 2, 2), (self.width // 2, 1), (self.width, 1))
        for i, (features, stride) in enumerate(stem, start=1):
            x = nn.relu(batch_norm(train, self.dtype, f"bn{i}")(conv(features, 3, stride, self.dtype, f"conv{i}")(x)))
        x = avg_pool(x, 2)
        for stage, blocks in enumerate(self.layers):
            planes = self.width * 2**stage
            for j in range(blocks):
                stride = 2 if stage > 0 and j == 0 else 1
                x = Bottleneck(planes, stride, self.dtype, name=f"layer{stage + 1}_{j}")(x, train)
        if grid:
            return x.astype(jnp.float32)  # [B, h, w, C]
        return AttentionPool2d(self.heads, self.output_dim, self.dtype, name="attnpool")(x).astype(jnp.float32)
