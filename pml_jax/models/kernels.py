"""Which convolution and max-pool implementations the ResNet runs: the one place that decides.

Kernel sets (`KERNELS`):
  "cpu"  rewrites tuned for XLA's CPU backend, which runs matrix products far faster than
         convolutions: a 1x1 conv is a matmul over channels (`channel_matmul`, whose weight
         gradient transposes the narrower operand), a k x k conv with at most `SMALL_OUTPUT`
         output pixels is a matmul over its k*k*Cin patches, and the max pool has a hand-written
         backward (`pool.max_pool`) instead of XLA's argmax + scatter.
  "xla"  every conv a plain `lax.conv_general_dilated`, the max pool one `reduce_window`
         differentiated by autodiff: what cuDNN and the TPU compiler are built and tuned for.
  "auto" "cpu" when the backend is the CPU, else "xla".
Both sets compute the same values and gradients (to float rounding) over the same param tree,
so weights and checkpoints move between them unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pml_jax.errors import PmlError
from pml_jax.models import pool

KERNELS = ("auto", "cpu", "xla")
SMALL_OUTPUT = 16  # output pixels at or below which a "cpu" k x k conv runs as a patch matmul


def resolve_kernels(kernels: str = "auto", backend: str | None = None) -> str:
    """The concrete kernel set, "cpu" or "xla", that `kernels` means on `backend` (a platform
    name such as 'cpu', 'gpu', 'tpu'; default `jax.default_backend()`)."""
    if kernels not in KERNELS:
        raise PmlError(f"kernels={kernels!r} is not one of {list(KERNELS)}")
    if kernels != "auto":
        return kernels
    return "cpu" if (backend or jax.default_backend()) == "cpu" else "xla"


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


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """Bias-free conv, NHWC x HWIO [k, k, Cin, Cout] -> NHWC, `pad` zeros per side."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cpu_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """`xla_conv`'s values computed as XLA:CPU runs fastest: a 1x1 conv as a matrix product over
    channels (a strided one samples every `stride`-th pixel first), a conv with at most
    `SMALL_OUTPUT` output pixels (layer4 of a 64 px input) as a product over its k*k*Cin patches
    (XLA's CPU convolution falls to ~1 GFLOP/s on such tiny maps: 3x3, 512 channels, 2x2 output,
    1.7 s vs 10 ms per batch), any other as `xla_conv`."""
    k, cout = kernel.shape[0], kernel.shape[-1]
    if k == 1 and pad == 0:
        return channel_matmul(x[:, ::stride, ::stride, :], kernel[0, 0])
    out_h, out_w = ((n + 2 * pad - k) // stride + 1 for n in x.shape[1:3])
    if out_h * out_w > SMALL_OUTPUT:
        return xla_conv(x, kernel, stride, pad)
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # [B, H', W', k*k*Cin] in the kernel's (kh, kw, cin) order
    patches = jnp.concatenate(pool.window_taps(padded, k, stride, (out_h, out_w)), axis=-1)
    return channel_matmul(patches, kernel.reshape(-1, cout))


def conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int, kernels: str = "auto") -> jax.Array:
    """Bias-free conv of `kernels`' set, NHWC [B, H, W, Cin] x HWIO [k, k, Cin, Cout] ->
    [B, H', W', Cout], `pad` zeros per side."""
    impl = cpu_conv if resolve_kernels(kernels) == "cpu" else xla_conv
    return impl(x, kernel, stride, pad)


def max_pool(x: jax.Array, k: int = 3, stride: int = 2, pad: int = 1, kernels: str = "auto") -> jax.Array:
    """k x k max pool of `kernels`' set with `stride`, `pad` px of -inf padding per side:
    [B, H, W, C] -> [B, H', W', C]; "cpu" uses the hand-written backward, "xla" autodiff's."""
    impl = pool.max_pool if resolve_kernels(kernels) == "cpu" else pool.window_max
    return impl(x, k, stride, pad)
