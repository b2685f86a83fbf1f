"""Threshold sweep speed: one vmapped, jitted sweep vs the fastbook per-threshold loop.

    python bench/metrics.py [--rows 5000] [--classes 20] [--repeats 20]

For 29 (the fastbook grid) and 1000 thresholds on N x C predictions, times
  numpy loop     : [((preds > t) == targs.astype(bool)).astype(float32).mean() for t in xs]
                   (the seed's `[accuracy_multi(preds, targs, thresh=i, sigmoid=False) for i in xs]`)
  jit loop       : the same loop calling our jitted accuracy_multi (thresh traced, one compile)
  sweep/<method> : threshold_sweep(preds, targs, xs, method=...), one jitted call vmapped over the
                   cutoffs, for bucket (the default: bucketize each score once, histogram, tail
                   sums) and compare (all N x C scores vs each cutoff)
The contenders run interleaved, one call each per round, so that load from other processes on a
shared machine hits them alike; steady-state times are medians over the rounds, and the first
call's extra time (trace + compile) is reported separately. The load average is printed before
and after. Also times epoch_metrics (every metric, AP, VOC07 AP, 3 sweeps).
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import jax
import numpy as np

from pml_jax.metrics import accuracy_multi, epoch_metrics, threshold_sweep


def seed_loop(preds: np.ndarray, targs: np.ndarray, xs: np.ndarray) -> list:
    """The fastbook loop, in NumPy: fastai's accuracy_multi(sigmoid=False) per threshold."""
    return [((preds > t) == targs.astype(bool)).astype(np.float32).mean() for t in xs]


def jit_loop(preds, targs, xs) -> list:
    """The fastbook loop over our jitted accuracy_multi; waits for every result."""
    return jax.block_until_ready([accuracy_multi(preds, targs, thresh=t, sigmoid=False) for t in xs])


def vmap_sweep(preds, targs, xs, method: str):
    """One vmapped sweep over all thresholds; waits for the result."""
    return jax.block_until_ready(threshold_sweep(preds, targs, xs, method=method))


def timed_interleaved(fns: dict, rounds: int) -> dict:
    """{name: (first call s, median s over `rounds`, last result)}, calling each fn once per round in turn."""
    first, times, outs = {}, {name: [] for name in fns}, {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        outs[name] = fn()
        first[name] = time.perf_counter() - t0
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (first[name], float(np.median(times[name])), outs[name]) for name in fns}


def load() -> str:
    """The 1/5/15-minute load averages and the CPU count, as text."""
    return "load average {:.2f} {:.2f} {:.2f} on {} CPUs".format(*os.getloadavg(), os.cpu_count())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    targs = (rng.random((args.rows, args.classes)) < 0.1).astype(np.float32)
    logits = rng.standard_normal(targs.shape).astype(np.float32) + 2.5 * (targs - 0.5)
    preds = (1 / (1 + np.exp(-logits))).astype(np.float32)
    d_preds, d_targs = jax.device_put(preds), jax.device_put(targs)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}; {load()}")
    print(f"predictions: {args.rows} x {args.classes} float32, median of {args.repeats} interleaved rounds\n")
    header = ("thresholds", "method", "steady ms", "first-call extra ms", "numpy loop / this")
    print("{:>10} {:>14} {:>11} {:>20} {:>18}".format(*header))

    for n_thr in (29, 1000):
        lo, hi = (0.05, 0.95) if n_thr == 29 else (0.0, 1.0)
        xs = np.linspace(lo, hi, n_thr, dtype=np.float32)
        d_xs = jax.device_put(xs)
        fns = {
            "numpy loop": partial(seed_loop, preds, targs, xs),
            "jit loop": partial(jit_loop, d_preds, d_targs, xs),
            "sweep/bucket": partial(vmap_sweep, d_preds, d_targs, d_xs, "bucket"),
            "sweep/compare": partial(vmap_sweep, d_preds, d_targs, d_xs, "compare"),
        }
        results = timed_interleaved(fns, args.repeats if n_thr == 29 else max(3, args.repeats // 4))
        loop_s = results["numpy loop"][1]
        for name, (first, steady, _) in results.items():
            extra_ms = (first - steady) * 1e3
            print(f"{n_thr:>10} {name:>14} {steady * 1e3:>11.3f} {extra_ms:>20.1f} {loop_s / steady:>17.2f}x")
        reference = np.asarray(results["numpy loop"][2])
        diffs = []
        for name, (_, _, out) in results.items():
            curve = np.asarray(out[0] if name.startswith("sweep") else out)
            diffs.append(f"{name} {np.abs(curve - reference).max():.1e}")
        print(f"{'':>10} max |curve - numpy loop curve|: {', '.join(diffs)}\n")

    summary = {"epoch_metrics": lambda: jax.block_until_ready(epoch_metrics(d_preds, d_targs))}
    first, steady, _ = timed_interleaved(summary, args.repeats)["epoch_metrics"]
    print(f"epoch_metrics (all metrics, AP/VOC07 AP, 3 x 29-threshold sweeps): {steady * 1e3:.2f} ms "
          f"steady, first-call extra {(first - steady) * 1e3:.0f} ms")
    print(load())


if __name__ == "__main__":
    main()
