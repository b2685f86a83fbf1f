"""What pml_jax's CPU choices buy: its steps A/B against XLA's defaults and alternatives, in one run.

    python bench/cpu_options.py [--archs resnet18,resnet50] [--phases train,frozen,eval]
                                [--variants 'jaxlib default,ynn off,...'] [--repeats 5]

Variants (each compiles the real train / frozen / eval steps of bench/train_step.py):
  pml_jax         what pml_jax does: YNNPACK for reductions only (`steps.CPU_OPTIONS`), its max pool
                  and `channel_matmul` (1x1 and small-output convolutions)
  jaxlib default  no compiler options: jaxlib also sends convolutions and matmuls to YNNPACK
  ynn off         `xla_cpu_experimental_ynn_fusion_type=''`: no YNNPACK at all
  flax max_pool   pml_jax with `flax.linen.max_pool` (XLA's select-and-scatter gradient)
  plain dot       pml_jax with `jnp.dot` for `channel_matmul` (autodiff's weight gradient)
Phase by phase, each repeat times --steps steps of every variant (the order flips every repeat);
prints the median images/s and the speed relative to `pml_jax` (median and range of the
per-repeat ratios), with the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from unittest import mock

import flax.linen as nn
import jax.numpy as jnp

from train_step import PHASES, interleaved_times, jax_runners, load, random_batch, speedup

from pml_jax.train import steps


def flax_max_pool(x, k=3, stride=2, pad=1):
    return nn.max_pool(x, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


VARIANTS = {  # name: (compiler options of every step, {dotted name in pml_jax.models: replacement})
    "pml_jax": (steps.CPU_OPTIONS, {}),
    "jaxlib default": (None, {}),
    "ynn off": ({"xla_cpu_experimental_ynn_fusion_type": ""}, {}),
    "flax max_pool": (steps.CPU_OPTIONS, {"pml_jax.models.pool.max_pool": flax_max_pool}),
    "plain dot": (steps.CPU_OPTIONS, {"pml_jax.models.kernels.channel_matmul": jnp.dot}),
}


def compile_variant(arch: str, batch: dict, phases, options, swaps: dict) -> dict:
    """jax_runners(...) with the steps compiled under `options` and `swaps` made in pml_jax's modules
    (the "cpu" kernels that the CPU backend resolves to)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(steps, "compiler_options", lambda: options))
        for target, replacement in swaps.items():
            stack.enter_context(mock.patch(target, replacement))
        return jax_runners(arch, batch, phases)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="pml_jax is always run")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timing")
    args = ap.parse_args()
    batch = random_batch(args.batch, args.size)
    phases = args.phases.split(",")
    variants = ["pml_jax"] + [v for v in args.variants.split(",") if v != "pml_jax"]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; valid: {', '.join(VARIANTS)}")
    print(f"{args.size} px, batch {args.batch}, f32; medians of {args.repeats} interleaved timings "
          f"of {args.steps} steps")
    for arch in args.archs.split(","):
        runs = {phase: {} for phase in phases}
        for name in variants:
            options, swaps = VARIANTS[name]
            for phase, runner in compile_variant(arch, batch, phases, options, swaps).items():
                runs[phase][name] = runner.run
        for phase in phases:
            times = interleaved_times(runs[phase], args.steps, args.repeats)
            rate = {name: f"{args.batch / statistics.median(t):.1f} img/s" for name, t in times.items()}
            print(f"{arch:9} {phase:6} pml_jax {rate['pml_jax']} | " + " | ".join(
                f"{name} {rate[name]} ({speedup(times, name, 'pml_jax')})" for name in variants[1:])
                + f"  {load()}", flush=True)


if __name__ == "__main__":
    main()
