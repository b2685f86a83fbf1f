"""pml_jax step throughput and model FLOPs utilisation (MFU) on this machine.

    python bench/train_step.py [--archs resnet18,resnet50] [--size 128] [--batch 64] [--repeats 5] [--steps 3]
                               [--dtypes float32,bfloat16] [--kernels auto]
    python bench/train_step.py --cache-start [--archs resnet18]

For each arch, times the real jitted steps of a fastai `fine_tune` run (random uint8 images, 20
classes): `train` (unfrozen: fwd + bwd + fastai Adam), `frozen` (body frozen but its BatchNorms,
as fastai's `freeze`) and `eval` (running stats, no grad). Prints the compile time, the median
images/s over --repeats timings of --steps steps, XLA's cost-analysis FLOPs per step, achieved
GFLOP/s and MFU = achieved / peak, where peak = cores x GHz x FLOP/cycle/core (AVX-512 with two
FMA units: 2 FMA x 16 f32 lanes x 2 = 64; AVX2: 32), read from /proc/cpuinfo (printed; MFU of
bfloat16 steps is against that same f32 peak). With several --dtypes (compute dtypes, see
`pml_jax.train.precision`) each phase's steps of every dtype are timed in turn, interleaved, and
each dtype's speed relative to the first is printed. --kernels picks the conv / max-pool
implementations (`pml_jax.models.kernels`). The machine load (`os.getloadavg`) is printed next to
each figure.

--cache-start: compile time of the first arch's train step in two fresh processes sharing one new,
empty persistent compilation cache (`pml_jax.train.compile_cache.enable_compile_cache`): the first
process compiles and fills it, the second loads from it. Prints both processes' compile seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from pml_jax.models.classifier import create_model  # noqa: E402
from pml_jax.train.compile_cache import enable_compile_cache  # noqa: E402
from pml_jax.train.groups import N_GROUPS  # noqa: E402
from pml_jax.train.precision import compute_dtype  # noqa: E402
from pml_jax.train.steps import TrainState, make_eval_step, setup_phase  # noqa: E402

PHASES = ("train", "frozen", "eval")
N_OUT = 20


@dataclass
class Runner:
    """One compiled step: `run()` executes it once and blocks; `flops` per step (XLA cost analysis)."""

    run: Callable[[], None]
    flops: float
    compile_s: float


def random_batch(batch: int, size: int, n_out: int = N_OUT, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded uint8 images [B, size, size, 3] and multi-hot float32 targets [B, n_out]."""
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "target": (rng.random((batch, n_out)) < 0.15).astype(np.float32)}


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def jax_runners(arch: str, batch: dict[str, np.ndarray], phases=PHASES, seed: int = 0, dtype: str = "auto",
                kernels: str = "auto") -> dict[str, Runner]:
    """Compile pml_jax's train/frozen/eval steps for `arch` (+ fastai head) on `batch`, computing in
    `dtype` (a name of `pml_jax.train.precision.DTYPES`) with the `kernels` set."""
    compute = compute_dtype(dtype)
    model, variables = create_model(arch, batch["target"].shape[1], dtype=compute, seed=seed, kernels=kernels)
    params, stats = variables["params"], variables["batch_stats"]
    dev_batch = jax.device_put(batch)
    runners = {}
    for phase in phases:
        t0 = time.perf_counter()
        if phase == "eval":
            step = make_eval_step(model, compute)
            args = (params, stats, dev_batch)
            compiled = step.lower(*args).compile()

            def run(compiled=compiled, args=args):
                jax.block_until_ready(compiled(*args))
        else:
            setup = setup_phase(model, params, stats, frozen=phase == "frozen", dtype=compute)
            # the step donates its state: copies, so the next phase still has the params
            state = TrainState(jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, stats), setup.opt_state)
            extra = (jnp.full((N_GROUPS,), 1e-4, jnp.float32), jnp.float32(0.9), jax.random.key(seed))
            compiled = setup.step.lower(state, dev_batch, *extra).compile()
            cell = [state]

            def run(compiled=compiled, cell=cell, extra=extra):
                cell[0], loss = compiled(cell[0], dev_batch, *extra)
                jax.block_until_ready(loss)
        runners[phase] = Runner(run, _flops(compiled), time.perf_counter() - t0)
    return runners


def time_steps(run: Callable[[], None], steps: int) -> float:
    """Seconds per step, averaged over `steps` back-to-back calls."""
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - t0) / steps


def interleaved_times(runs: dict, steps: int, repeats: int) -> dict:
    """{key: [seconds per step, one per repeat]} of `runs` ({key: run()}), each warmed up once,
    then timed over `steps` steps in turn, `repeats` times, the order reversed every other repeat."""
    for run in runs.values():
        run()
    times = {key: [] for key in runs}
    for rep in range(repeats):
        for key in (list(runs) if rep % 2 == 0 else list(runs)[::-1]):
            times[key].append(time_steps(runs[key], steps))
    return times


def speedup(times: dict, key, base) -> str:
    """`key`'s speed relative to `base` from interleaved_times: the median over repeats of the
    per-repeat ratio base time / key time (each pair timed back to back, so slow drifts of the
    machine cancel), with its range, e.g. '0.94x (0.88-1.02)'."""
    return ratio_text(*ratio_range(times, key, base))


def ratio_text(median: float, lo: float, hi: float) -> str:
    """A ratio with its range, e.g. '0.94x (0.88-1.02)'."""
    return f"{median:.2f}x ({lo:.2f}-{hi:.2f})"


def ratio_range(times: dict, key, base) -> tuple[float, float, float]:
    """(median, min, max) over repeats of the per-repeat ratio base time / key time (see speedup)."""
    ratios = [b / k for k, b in zip(times[key], times[base])]
    return statistics.median(ratios), min(ratios), max(ratios)


def timed_rows(ours: dict[str, Runner], theirs: dict[str, Callable[[], None]], batch_size: int,
               steps: int, repeats: int) -> list[dict]:
    """One row per phase of `ours`, timed interleaved with the same phase of `theirs` (PyTorch's
    `run()` closures, or {} to time pml_jax alone): phase, jax_img_s, jax_step_s, compile_s,
    jax_gflops (XLA's FLOPs / median step time) and, with theirs, torch_img_s, ratio (jax/torch
    speed: median of the per-repeat ratios), ratio_lo, ratio_hi, torch_gflops (the same FLOPs);
    load (1-minute load average)."""
    rows = []
    for phase, runner in ours.items():
        runs = {"jax": runner.run, **({"torch": theirs[phase]} if phase in theirs else {})}
        times = interleaved_times(runs, steps, repeats)
        tj = statistics.median(times["jax"])
        row = {"phase": phase, "jax_img_s": batch_size / tj, "jax_step_s": tj, "compile_s": runner.compile_s,
               "jax_gflops": runner.flops / tj / 1e9}
        if "torch" in times:
            tt = statistics.median(times["torch"])
            ratio, lo, hi = ratio_range(times, "jax", "torch")
            row.update(torch_img_s=batch_size / tt, ratio=ratio, ratio_lo=lo, ratio_hi=hi,
                       torch_gflops=runner.flops / tt / 1e9)
        rows.append({**row, "load": os.getloadavg()[0]})
    return rows


def load() -> str:
    """The 1-minute load average and the core count, e.g. 'load 2.31/2'."""
    return f"load {os.getloadavg()[0]:.2f}/{os.cpu_count()}"


def cpu_peak_gflops() -> tuple[float, str]:
    """(peak f32 GFLOP/s, how it was computed) from /proc/cpuinfo: cores x GHz x FLOP/cycle/core."""
    info = open("/proc/cpuinfo").read()
    mhz = max(float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz"))
    flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    cores = os.cpu_count()
    peak = cores * mhz / 1e3 * per_cycle
    how = (f"{cores} cores x {mhz / 1e3:.2f} GHz (cpuinfo) x {per_cycle} FLOP/cycle "
           f"({'AVX-512: 2 FMA x 16 f32 x 2' if per_cycle == 64 else 'AVX2: 2 FMA x 8 f32 x 2'})")
    return peak, how


def cache_start(arch: str, batch: int, size: int) -> None:
    """Print the train-step compile seconds of a first and a second process on one fresh cache."""
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PML_JAX_CACHE_XLA": folder}
        cmd = [sys.executable, __file__, "--compile-only", "--archs", arch, "--batch", str(batch),
               "--size", str(size)]
        for run in ("first", "second"):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            print(f"{run:6} process: {out.strip()}, whole process {time.perf_counter() - t0:.1f} s  {load()}",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timing")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--dtypes", default="auto", help="compute dtypes to compare, e.g. float32,bfloat16")
    ap.add_argument("--kernels", default="auto", help="conv / max-pool kernel set: auto, cpu or xla")
    ap.add_argument("--cache-start", action="store_true", help="first vs second process compile time")
    ap.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    arch0 = args.archs.split(",")[0]
    if args.cache_start:
        return cache_start(arch0, args.batch, args.size)
    if args.compile_only:
        enable_compile_cache()
        r = jax_runners(arch0, random_batch(args.batch, args.size), ["train"])["train"]
        return print(f"{arch0} train step compiled in {r.compile_s:.1f} s")
    peak, how = cpu_peak_gflops()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"peak f32 = {peak:.0f} GFLOP/s = {how}")
    batch = random_batch(args.batch, args.size)
    phases = args.phases.split(",")
    dtypes = args.dtypes.split(",")
    print(f"kernels {args.kernels}; dtypes {', '.join(f'{d} = {compute_dtype(d).name}' for d in dtypes)}")
    print(f"{'arch':9} {'phase':6} {'dtype':8} {'compile s':>9} {'img/s':>7} {'GFLOP/step':>10} {'GFLOP/s':>8} "
          f"{'MFU':>6}  {'vs ' + dtypes[0]:>20}  load")
    for arch in args.archs.split(","):
        runners = {d: jax_runners(arch, batch, phases, dtype=d, kernels=args.kernels) for d in dtypes}
        for phase in phases:
            times = interleaved_times({d: runners[d][phase].run for d in dtypes}, args.steps, args.repeats)
            for d in dtypes:
                r, t = runners[d][phase], statistics.median(times[d])
                gflops = r.flops / t / 1e9
                print(f"{arch:9} {phase:6} {d:8} {r.compile_s:9.1f} {args.batch / t:7.1f} {r.flops / 1e9:10.1f} "
                      f"{gflops:8.1f} {gflops / peak:6.1%}  {speedup(times, d, dtypes[0]):>20}  {load()}",
                      flush=True)


if __name__ == "__main__":
    main()
