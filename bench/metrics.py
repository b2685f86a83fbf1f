"""Threshold sweep speed: one vmapped, jitted sweep vs the fastbook per-threshold loop.

    python bench/metrics.py [--rows 5000] [--classes 20] [--repeats 20]

For 29 (the fastbook grid) and 1000 thresholds on N x C predictions, times
  numpy loop : [((preds > t) == targs.astype(bool)).astype(float32).mean() for t in xs]
               (the seed's `[accuracy_multi(preds, targs, thresh=i, sigmoid=False) for i in xs]`)
  jit loop   : the same loop calling our jitted accuracy_multi (thresh traced, one compile)
  sweep/<m>  : threshold_sweep(preds, targs, xs, method=m), one vmapped call, for
               m = compare (all N x C scores vs each cutoff) and sort (sort once, binary search);
               method='auto' picks compare for <= 100 cutoffs, sort above
Steady-state times are medians over --repeats runs; the first call's extra time (trace +
compile) is reported separately. Also times epoch_metrics (every metric + 3 sweeps) once.
"""

from __future__ import annotations

import argparse
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


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call seconds, median seconds of `repeats` later calls, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), out


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
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"predictions: {args.rows} x {args.classes} float32, median of {args.repeats} runs\n")
    header = ("thresholds", "method", "steady ms", "first-call extra ms", "numpy loop / this")
    print("{:>10} {:>13} {:>11} {:>20} {:>18}".format(*header))

    for n_thr in (29, 1000):
        lo, hi = (0.05, 0.95) if n_thr == 29 else (0.0, 1.0)
        xs = np.linspace(lo, hi, n_thr, dtype=np.float32)
        d_xs = jax.device_put(xs)
        reps = args.repeats if n_thr == 29 else max(3, args.repeats // 4)
        results = {
            "numpy loop": timed(lambda: seed_loop(preds, targs, xs), reps),
            "jit loop": timed(lambda: jit_loop(d_preds, d_targs, xs), reps),
        }
        for method in ("compare", "sort"):
            results[f"sweep/{method}"] = timed(partial(vmap_sweep, d_preds, d_targs, d_xs, method), args.repeats)
        loop_s = results["numpy loop"][1]
        for name, (first, steady, _) in results.items():
            extra_ms = (first - steady) * 1e3
            print(f"{n_thr:>10} {name:>13} {steady * 1e3:>11.3f} {extra_ms:>20.1f} {loop_s / steady:>17.2f}x")
        reference = np.asarray(results["numpy loop"][2])
        diffs = []
        for name, (_, _, out) in results.items():
            curve = np.asarray(out[0] if name.startswith("sweep") else out)
            diffs.append(f"{name} {np.abs(curve - reference).max():.1e}")
        print(f"{'':>10} max |curve - numpy loop curve|: {', '.join(diffs)}\n")

    first, steady, _ = timed(lambda: jax.block_until_ready(epoch_metrics(d_preds, d_targs)), args.repeats)
    print(f"epoch_metrics (all metrics, AP/VOC07 AP, 3 x 29-threshold sweeps): {steady * 1e3:.2f} ms "
          f"steady, first-call extra {(first - steady) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
