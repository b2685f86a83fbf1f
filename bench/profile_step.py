"""Where one step's time goes: pml_jax's step under jax.profiler and, when PyTorch is installed,
the same step of bench/compare_torch.py under torch.profiler.

    python bench/profile_step.py [--arch resnet18] [--phase train] [--size 128] [--batch 32] [--steps 3]

pml_jax: milliseconds per step (timed without the profiler), then the ops XLA labels in its trace,
summed per op family (the name without its `.N` suffix) over XLA's worker threads, per step:
fusions (BatchNorm, ReLU, optimizer), reductions, transposes and copies, some matmuls. XLA:CPU's
Eigen convolutions carry no label, so "wall x threads - labelled" is their time plus any idle time.
PyTorch: its operators by self CPU time per step (convolutions, BatchNorm, ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import tempfile
from collections import Counter
from pathlib import Path

import jax

from train_step import PHASES, jax_runners, random_batch, time_steps

ROWS = 15


def jax_profile(run, steps: int) -> None:
    """Print wall ms per step and the labelled XLA ops of `run()` per step."""
    run()
    wall = time_steps(run, steps) * 1e3
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(steps):
                run()
        data = jax.profiler.ProfileData.from_file(str(next(Path(folder).rglob("*.xplane.pb"))))
    families, threads = Counter(), set()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads
                continue
            threads.add(line.name)
            for event in line.events:
                if not event.name.startswith(("ThunkExecutor", "$")):  # executor spans, Python frames
                    families[re.sub(r"\.\d+$", "", event.name)] += event.duration_ns / 1e6 / steps
    labelled = sum(families.values())
    print(f"pml_jax: {wall:.0f} ms per step; {len(threads)} XLA threads; labelled ops {labelled:.0f} ms; "
          f"wall x threads - labelled {wall * len(threads) - labelled:.0f} ms (convolutions, idle)")
    for name, ms in families.most_common(ROWS):
        print(f"  {ms:8.1f} ms  {name}")


def torch_profile(run, steps: int) -> None:
    """Print torch's operators of `run()` by self CPU time per step."""
    from torch.profiler import ProfilerActivity, profile

    run()
    wall = time_steps(run, steps) * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run()
    print(f"torch: {wall:.0f} ms per step")
    for op in sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)[:ROWS]:
        print(f"  {op.self_cpu_time_total / 1e3 / steps:8.1f} ms  {op.key}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--phase", default="train", choices=PHASES)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    batch = random_batch(args.batch, args.size)
    print(f"{args.arch} {args.phase}, {args.size} px, batch {args.batch}, f32; {args.steps} steps")
    jax_profile(jax_runners(args.arch, batch, (args.phase,))[args.phase].run, args.steps)
    if importlib.util.find_spec("torch") is None:
        print("torch: not installed (pip install -e '.[bench]' to profile PyTorch's step too)")
        return
    from compare_torch import torch_runners

    torch_profile(torch_runners(args.arch, batch, (args.phase,))[args.phase], args.steps)


if __name__ == "__main__":
    main()
