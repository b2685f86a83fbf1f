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
from pml_jax.models.pool import max_pool, window_taps

# arch -> (block kind, blocks per stage)
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
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


SMALL_OUTPUT = 16  # output pixels at or below which a k x k conv runs as a patch matmul (see Conv)


@jax.custom_vjp
def channel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """`x @ w` over the last axis, [..., Cin] x [Cin, Cout] -> [..., Cout], as `jnp.dot`.

    Its weight gradient, a product contracting all pixels, is computed so that XLA transposes the
    narrower of x and the output gradient: XLA:CPU materialises that transpose, and transposing
    256+ channels wide runs far slower than 64 (resnet50 train step 1.3-1.5x faster).
    """
    return jnp.dot(x, w)


def _channel_matmul_fwd(x, w):
    return jnp.dot(x, w), (x, w)


def _channel_matmul_bwd(residuals, g):
    x, w = residuals
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = jnp.dot(g2.T, x2).T if x2.shape[1] > g2.shape[1] else jnp.dot(x2.T, g2)
    return jnp.dot(g, w.T), dw


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


class Conv(nn.Module):
    """Bias-free torchvision conv, NHWC: [B, H, W, Cin] -> [B, H', W', features] in `dtype`.

    The kernel is HWIO `[k, k, Cin, features]` (float32 param). A 1x1 conv is computed exactly as
    what it is, a matrix product over channels (a strided one samples every `stride`-th pixel
    first): XLA's CPU backend runs matmuls and their weight gradients much faster than the
    equivalent convolutions. A conv whose output has at most `SMALL_OUTPUT` pixels (layer4 of a
    64 px input) is also a matrix product, over its k*k*Cin patches: XLA's CPU convolution falls
    to ~1 GFLOP/s on such tiny maps (3x3, 512 channels, 2x2 output: 1.7 s vs 10 ms per batch).
    """

    features: int
    kernel_size: int
    stride: int = 1
    pad: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if k == 1 and self.pad == 0:
            return channel_matmul(x[:, ::s, ::s, :], kernel[0, 0])
        p = self.pad
        out_h, out_w = (x.shape[1] + 2 * p - k) // s + 1, (x.shape[2] + 2 * p - k) // s + 1
        if out_h * out_w <= SMALL_OUTPUT:
            padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            # [B, H', W', k*k*Cin] in the kernel's (kh, kw, cin) order
            patches = jnp.concatenate(window_taps(padded, k, s, (out_h, out_w)), axis=-1)
            return channel_matmul(patches, kernel.reshape(-1, self.features))
        return jax.lax.conv_general_dilated(
            x, kernel, (s, s), ((self.pad, self.pad), (self.pad, self.pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Downsample(nn.Module):
    """Shortcut projection: 1x1 conv (stride s) `'0'` + BatchNorm `'1'`."""

    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv(self.features, 1, self.stride, 0, self.dtype, name="0")(x)
        return BatchNorm(dtype=self.dtype, name="1")(x, train)


class Block(nn.Module):
    """BasicBlock (3x3, 3x3) or v1.5 Bottleneck (1x1, 3x3 with the stride, 1x1 x4).

    [B, H, W, Cin] -> [B, H/stride, W/stride, features * expansion].
    """

    kind: str
    features: int
    stride: int = 1
    dtype: Any = jnp.float32

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
            y = Conv(f, k, s, p, self.dtype, name=f"conv{i}")(y)
            y = bn(f"bn{i}")(y, train)
            if i < len(convs):
                y = nn.relu(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_ch:
            shortcut = Downsample(out_ch, self.stride, self.dtype, name="downsample")(x, train)
        return nn.relu(y + shortcut.astype(y.dtype))


class Stage(nn.Module):
    """`layerN`: `num_blocks` blocks named '0', '1', ...; the first one carries the stride."""

    kind: str
    features: int
    num_blocks: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(self.num_blocks):
            stride = self.stride if i == 0 else 1
            x = Block(self.kind, self.features, stride, self.dtype, name=str(i))(x, train)
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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.astype(self.dtype)
        x = Conv(64, 7, 2, 3, self.dtype, name="conv1")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
        x = max_pool(x, 3, stride=2, pad=1)
        for i, n in enumerate(self.stage_sizes):
            stride = 1 if i == 0 else 2
            x = Stage(self.kind, 64 * 2**i, n, stride, self.dtype, name=f"layer{i + 1}")(x, train)
        if self.num_classes is None:
            return x
        return avg_pool_fc(x, self.num_classes)


def check_arch(arch: str) -> tuple[str, tuple[int, ...]]:
    """(block kind, stage sizes) of `arch`; an unknown name raises PmlError listing the valid ones."""
    if arch not in ARCHS:
        raise PmlError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[arch]


def resnet(arch: str, num_classes: int | None = 1000, dtype: Any = jnp.float32) -> ResNet:
    """The torchvision `arch` as a Flax module (classifier, or body when `num_classes=None`)."""
    kind, sizes = check_arch(arch)
    return ResNet(kind, sizes, num_classes, dtype)


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
