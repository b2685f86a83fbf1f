"""torchvision-exact ResNet 18/34/50/101/152 (v1.5) in Flax linen, NHWC.

The param tree mirrors torchvision's state_dict keys: `conv1`, `bn1`, `layer1`..`layer4` of
blocks `'0'`, `'1'`, ... (each `conv1, bn1, conv2, bn2[, conv3, bn3][, downsample{'0','1'}]`),
and `fc`. Conv kernels are HWIO, BatchNorm keeps `scale`/`bias` in `params` and
`mean`/`var` in `batch_stats`, Dense kernels are (in, out).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pml_jax.errors import PmlError
from pml_jax.choices import ARCHS
from pml_jax.models.kernels import conv, max_pool, resolve_kernels

EXPANSION = {"basic": 1, "bottleneck": 4}

# torchvision inits: conv kaiming_normal_(fan_out, relu), untruncated.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear default: kaiming_uniform_(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias_init(fan_in: int):
    """torch.nn.Linear's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """torch BatchNorm{1,2}d over every axis but the last: [..., C] -> [..., C].

    Normalises with the biased batch variance in training and updates the running variance
    with the unbiased one, as torch does. `momentum` is Flax's (0.9 == torch's 0.1). Statistics
    are computed in float32; the output has `dtype`.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    bias_init: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.constant(self.bias_init), (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        xf = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * (n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        return (xf * mul + (bias.astype(jnp.float32) - mean * mul)).astype(self.dtype)


def avg_pool_fc(x: jax.Array, n_out: int) -> jax.Array:
    """torchvision's classifier: features [B, H, W, nf] -> global average pool -> `fc`, a float32
    `torch.nn.Linear(nf, n_out)` with torch's default init -> float32 [B, n_out].

    Call it inside a compact method: `fc` becomes a submodule of the caller.
    """
    pooled = x.astype(jnp.float32).mean(axis=(1, 2))
    nf = pooled.shape[-1]
    return nn.Dense(n_out, kernel_init=linear_init, bias_init=linear_bias_init(nf),
                    dtype=jnp.float32, param_dtype=jnp.float32, name="fc")(pooled)


class Conv(nn.Module):
    """Bias-free torchvision conv, NHWC: [B, H, W, Cin] -> [B, H', W', features] in `dtype`.

    The kernel is HWIO `[k, k, Cin, features]` (float32 param). `kernels` picks the
    implementation (`pml_jax.models.kernels`: "cpu" matmul rewrites, "xla" plain convolutions,
    "auto" by backend); every set has the same param and the same values.
    """

    features: int
    kernel_size: int
    stride: int = 1
    pad: int = 0
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
        return conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.pad, self.kernels)


class Downsample(nn.Module):
    """Shortcut projection: 1x1 conv (stride s) `'0'` + BatchNorm `'1'`."""

    features: int
    stride: int
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.features, 1, self.stride, 0, self.dtype, self.kernels, name="0")(x)
        return BatchNorm(dtype=self.dtype, name="1")(x, train)


class Block(nn.Module):
    """BasicBlock (3x3, 3x3) or v1.5 Bottleneck (1x1, 3x3 with the stride, 1x1 x4).

    [B, H, W, Cin] -> [B, H/stride, W/stride, features * expansion].
    """

    kind: str
    features: int
    stride: int = 1
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        out_ch = self.features * EXPANSION[self.kind]
        bn = lambda name: BatchNorm(dtype=self.dtype, name=name)  # noqa: E731
        if self.kind == "basic":
            convs = [(3, self.stride, 1, self.features), (3, 1, 1, out_ch)]
        else:
            convs = [(1, 1, 0, self.features), (3, self.stride, 1, self.features), (1, 1, 0, out_ch)]
        y = x
        for i, (k, s, p, f) in enumerate(convs, start=1):
            y = Conv(f, k, s, p, self.dtype, self.kernels, name=f"conv{i}")(y)
            y = bn(f"bn{i}")(y, train)
            if i < len(convs):
                y = nn.relu(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_ch:
            shortcut = Downsample(out_ch, self.stride, self.dtype, self.kernels, name="downsample")(x, train)
        return nn.relu(y + shortcut.astype(y.dtype))


class Stage(nn.Module):
    """`layerN`: `num_blocks` blocks named '0', '1', ...; the first one carries the stride."""

    kind: str
    features: int
    num_blocks: int
    stride: int
    dtype: Any = jnp.float32
    kernels: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.num_blocks):
            stride = self.stride if i == 0 else 1
            x = Block(self.kind, self.features, stride, self.dtype, self.kernels, name=str(i))(x, train)
        return x


class ResNet(nn.Module):
    """torchvision ResNet on normalised float NHWC images [B, H, W, 3].

    With `num_classes` set: global average pool + `fc` -> logits [B, num_classes] (float32).
    With `num_classes=None`: the body, returning the last feature map
    [B, ceil(H/32), ceil(W/32), nf] (nf = 512 basic, 2048 bottleneck) in `dtype`.
    `train=True` uses batch statistics and needs `mutable=['batch_stats']`.
    """

    kind: str
    stage_sizes: tuple[int, ...]
    num_classes: int | None = 1000
    dtype: Any = jnp.float32
    kernels: str = "auto"  # conv / max-pool implementations, see pml_jax.models.kernels

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        x = Conv(64, 7, 2, 3, self.dtype, self.kernels, name="conv1")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
        x = max_pool(x, 3, stride=2, pad=1, kernels=self.kernels)
        for i, n in enumerate(self.stage_sizes):
            stride = 1 if i == 0 else 2
            stage = Stage(self.kind, 64 * 2**i, n, stride, self.dtype, self.kernels, name=f"layer{i + 1}")
            x = stage(x, train)
        if self.num_classes is None:
            return x
        return avg_pool_fc(x, self.num_classes)


def check_arch(arch: str) -> tuple[str, tuple[int, ...]]:
    """(block kind, stage sizes) of `arch`; an unknown name raises PmlError listing the valid ones."""
    if arch not in ARCHS:
        raise PmlError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[arch]


def resnet(arch: str, num_classes: int | None = 1000, dtype: Any = jnp.float32,
           kernels: str = "auto") -> ResNet:
    """The torchvision `arch` as a Flax module (classifier, or body when `num_classes=None`), its
    `kernels` resolved for the default backend (`pml_jax.models.kernels.resolve_kernels`)."""
    kind, sizes = check_arch(arch)
    return ResNet(kind, sizes, num_classes, dtype, resolve_kernels(kernels))


def num_features(arch: str) -> int:
    """Channels of the body's last feature map: 512 (resnet18/34) or 2048 (resnet50+)."""
    kind, _ = check_arch(arch)
    return 512 * EXPANSION[kind]


def init_variables(module: nn.Module, key: jax.Array, *example: jax.Array) -> dict:
    """`module.init(key, *example)` jitted with XLA optimisation off.

    The init graph (threefry draws for millions of params) runs once; unoptimised it compiles
    several times faster (resnet18 on CPU: ~4 s instead of ~21 s) for the same values.
    """
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((key, example))):
        return module.init(key, *example)  # already inside a trace (e.g. jax.eval_shape): no nested options
    init = jax.jit(module.init, compiler_options={"xla_backend_optimization_level": 0})
    return init(key, *example)
