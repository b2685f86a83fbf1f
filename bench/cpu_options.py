"""What pml_jax's CPU choices buy: its steps A/B against XLA's defaults and alternatives, in one run.

    python bench/cpu_options.py [--archs resnet18,resnet50] [--phases train,frozen,eval] [--repeats 5]

Variants (each compiles the real train / frozen / eval steps of bench/train_step.py):
  pml_jax         what pml_jax does: YNNPACK for reductions only (`steps.CPU_OPTIONS`), its max pool
                  and `channel_matmul` (1x1 and small-output convolutions)
  jaxlib default  no compiler options: jaxlib also sends convolutions and matmuls to YNNPACK
  ynn off         `xla_cpu_experimental_ynn_fusion_type=''`: no YNNPACK at all
  flax max_pool   pml_jax with `flax.linen.max_pool` (XLA's select-and-scatter gradient)
  plain dot       pml_jax with `jnp.dot` for `channel_matmul` (autodiff's weight gradient)
Each repeat times --steps steps of every variant (the order flips every repeat); prints the median
images/s and the ratio to `pml_jax`, with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from unittest import mock

import flax.linen as nn
import jax.numpy as jnp

from train_step import PHASES, interleaved_medians, jax_runners, load, random_batch

from pml_jax.train import steps


def flax_max_pool(x, k=3, stride=2, pad=1):
    return nn.max_pool(x, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


VARIANTS = {  # name: (compiler options of every step, {pml_jax.models.resnet name: replacement})
    "pml_jax": (steps.CPU_OPTIONS, {}),
    "jaxlib default": (None, {}),
    "ynn off": ({"xla_cpu_experimental_ynn_fusion_type": ""}, {}),
    "flax max_pool": (steps.CPU_OPTIONS, {"max_pool": flax_max_pool}),
    "plain dot": (steps.CPU_OPTIONS, {"channel_matmul": jnp.dot}),
}


def compile_variant(arch: str, batch: dict, phases, options, swaps: dict) -> dict:
    """jax_runners(...) with the steps compiled under `options` and `swaps` made in the ResNet module."""
    resnet = sys.modules["pml_jax.models.resnet"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(steps, "compiler_options", lambda: options))
        for name, replacement in swaps.items():
            stack.enter_context(mock.patch.object(resnet, name, replacement))
        return jax_runners(arch, batch, phases)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timing")
    args = ap.parse_args()
    batch = random_batch(args.batch, args.size)
    phases = args.phases.split(",")
    print(f"{args.size} px, batch {args.batch}, f32; medians of {args.repeats} interleaved timings "
          f"of {args.steps} steps")
    for arch in args.archs.split(","):
        runs = {}
        for name, (options, swaps) in VARIANTS.items():
            for phase, runner in compile_variant(arch, batch, phases, options, swaps).items():
                runs[phase, name] = runner.run
        rates = {key: args.batch / t for key, t in interleaved_medians(runs, args.steps, args.repeats).items()}
        for phase in phases:
            print(f"{arch:9} {phase:6} " + " | ".join(
                f"{name} {rates[phase, name]:.1f} img/s ({rates[phase, name] / rates[phase, 'pml_jax']:.2f}x)"
                for name in VARIANTS) + f"  {load()}", flush=True)


if __name__ == "__main__":
    main()
