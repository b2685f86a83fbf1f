"""Every convolution of a ResNet alone: pml_jax's Conv vs PyTorch's, forward / input gradient /
weight gradient, interleaved in one run.

    pip install -e ".[bench]"
    python bench/conv_layers.py [--arch resnet18] [--size 128] [--batch 32] [--repeats 5]

One row per distinct convolution (input size, channels, kernel, stride; `xN`: how many the body
has): milliseconds and GFLOP/s of each of the three computations, ours through `pml_jax`'s `Conv`
module (its matmul and patch paths included) compiled with the steps' CPU options, torch's
through `conv2d` and `aten.convolution_backward` on channels_last tensors, as in the torch step of
bench/compare_torch.py. Totals weight each row by its count; the stem's input gradient is listed
but left out of them (no step needs the image's gradient).

Isolated timings show where kernels differ, not what a step costs: both libraries run faster
inside a whole step (see bench/README.md), so decide changes with whole-step A/Bs
(bench/cpu_options.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter

try:
    import torch
except ImportError:
    print("bench/conv_layers.py needs PyTorch, which pml_jax does not: pip install -e '.[bench]'",
          file=sys.stderr)
    sys.exit(2)

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from train_step import time_steps  # noqa: E402

from pml_jax.models.resnet import ARCHS, Conv, resnet  # noqa: E402
from pml_jax.train.steps import compiler_options  # noqa: E402

KINDS = ("forward", "input grad", "weight grad")


def body_convs(arch: str, size: int) -> list[tuple[int, int, int, int, int, int, int]]:
    """(input size, Cin, Cout, kernel, stride, pad, count) of every distinct conv of `arch`'s body,
    read off the model itself: each `Conv` call while shape-tracing its init."""
    convs = Counter()

    def record(call, args, kwargs, context):
        module = context.module
        if isinstance(module, Conv) and context.method_name == "__call__":
            x = args[0]
            convs[x.shape[1], x.shape[-1], module.features, module.kernel_size, module.stride, module.pad] += 1
        return call(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(resnet(arch, None).init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return [(*conv, n) for conv, n in convs.items()]


def jax_fns(x: np.ndarray, cout: int, k: int, s: int, p: int):
    """(forward, input grad, weight grad) closures of pml_jax's Conv, each blocking; output shape."""
    module = Conv(cout, k, s, p)
    kernel = module.init(jax.random.key(0), x)["params"]["kernel"]

    def apply(w, inputs):
        return module.apply({"params": {"kernel": w}}, inputs)

    out = jax.eval_shape(apply, kernel, x)
    g = np.random.default_rng(1).standard_normal(out.shape, np.float32)
    options = compiler_options()
    fwd = jax.jit(apply, compiler_options=options)
    dx = jax.jit(lambda w, xs, gs: jax.vjp(lambda v: apply(w, v), xs)[1](gs)[0], compiler_options=options)
    dw = jax.jit(lambda w, xs, gs: jax.vjp(lambda v: apply(v, xs), w)[1](gs)[0], compiler_options=options)
    xs = jnp.asarray(x)
    fns = (lambda: fwd(kernel, xs).block_until_ready(),
           lambda: dx(kernel, xs, g).block_until_ready(),
           lambda: dw(kernel, xs, g).block_until_ready())
    return fns, np.array(kernel), g  # a writable copy, for torch.from_numpy


def torch_fns(x: np.ndarray, kernel: np.ndarray, g: np.ndarray, s: int, p: int):
    """The same three computations in PyTorch, NCHW views of NHWC memory (channels_last)."""
    tx = torch.from_numpy(x).permute(0, 3, 1, 2)
    tw = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
    tg = torch.from_numpy(g).permute(0, 3, 1, 2)

    def backward(mask):
        with torch.no_grad():
            torch.ops.aten.convolution_backward(tg, tx, tw, None, [s, s], [p, p], [1, 1], False,
                                                [0, 0], 1, mask)

    def forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, None, s, p)

    return forward, lambda: backward([True, False, False]), lambda: backward([False, True, False])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", choices=list(ARCHS))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"{args.arch}, {args.size} px, batch {args.batch}, f32, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), jax {jax.__version__}; median ms of {args.repeats}")
    print(f"{'conv':28} " + " ".join(f"{k + ' jax/torch':>24}" for k in KINDS))
    totals = {lib: np.zeros(3) for lib in ("jax", "torch")}
    rng = np.random.default_rng(0)
    for h, cin, cout, k, s, p, n in body_convs(args.arch, args.size):
        x = rng.standard_normal((args.batch, h, h, cin), np.float32)
        ours, kernel, g = jax_fns(x, cout, k, s, p)
        theirs = torch_fns(x, kernel, g, s, p)
        flops = 2 * g.size * k * k * cin
        cells = []
        for i, (fj, ft) in enumerate(zip(ours, theirs)):
            fj(), ft()  # compile / warm up
            tj, tt = [], []
            for _ in range(args.repeats):  # alternate the libraries, one timing each
                tj.append(time_steps(fj, 1))
                tt.append(time_steps(ft, 1))
            mj, mt = statistics.median(tj) * 1e3, statistics.median(tt) * 1e3
            if not (i == 1 and cin == 3):  # the stem's input gradient: no step computes it
                totals["jax"][i] += n * mj
                totals["torch"][i] += n * mt
            cells.append(f"{mj:6.1f}/{mt:6.1f} {flops / mj / 1e6:4.0f}/{flops / mt / 1e6:4.0f}")
        name = f"{h}px {cin}->{cout} {k}x{k}/{s} x{n}"
        print(f"{name:28} " + " ".join(f"{cell:>24}" for cell in cells), flush=True)
    print("(each cell: ms jax/torch, GFLOP/s jax/torch)")
    print(f"{'total ms, jax/torch':28} " + " ".join(
        f"{totals['jax'][i]:11.0f}/{totals['torch'][i]:<12.0f}" for i in range(3)))


if __name__ == "__main__":
    main()
