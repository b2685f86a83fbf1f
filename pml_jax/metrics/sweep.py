"""Choosing cutoffs: a vmapped sweep of one global threshold, and per-class thresholds.

Every cutoff t decides "score > t" (strict, as fastai). A sweep first builds the confusion
counts at all T cutoffs as one Counts table (cutoff-dependent fields with a leading [T] axis),
then jax.vmaps the metric over that table. Two exact ways to build the table:
  'bucket' (default): sort the cutoffs; give every score the number of cutoffs strictly below
             it (binary search with '>'); histogram those bucket numbers per class and per row,
             split by truth; the count at cutoff j is the sum of the buckets above j.
             O(N C log T + (N + C) T). The per-row part, read only by f1_samples, is dropped by
             XLA when no metric reads it; where it is read, its dense [T, N] tables make
             f1_samples over ~1000 cutoffs about as slow as 'compare' on CPU (exact either way).
  'compare': compare all N x C scores with each cutoff, O(T N C): the definition, no scatter.
Cutoffs may come in any order and repeat; a NaN cutoff is never exceeded (as with '>').
Ties in the swept value go to the first (lowest-index) threshold of the grid, as argmax does.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pml_jax.errors import PmlError
from pml_jax.metrics._inputs import choice, scores_and_targets, static_shape, threshold_grid
from pml_jax.metrics.classification import (
    Counts,
    accuracy,
    class_accuracy,
    counts_from_bools,
    prf,
    row_weights,
)

DEFAULT_THRESHOLDS = np.linspace(0.05, 0.95, 29, dtype=np.float32)
"""The fastbook grid: torch.linspace(0.05, 0.95, 29)."""

SWEEP_METRICS = {
    "accuracy": accuracy,
    "f1_micro": lambda c: prf(c, "micro")[2],
    "f1_macro": lambda c: prf(c, "macro")[2],
    "f1_samples": lambda c: prf(c, "samples")[2],
}
"""Scalar metrics of Counts that a sweep can maximise."""

PER_CLASS_METRICS = {"f1": lambda c: prf(c, None)[2], "accuracy": class_accuracy}
"""Per-class [C] metrics of Counts used by per_class_thresholds."""

METHODS = ("bucket", "compare")

PER_CUTOFF = Counts(tp=0, pp=0, pos=None, row_tp=0, row_pp=0, row_pos=None, n=None)
"""vmap axes of a sweep's Counts table: tp, pp [T, C] and row_tp, row_pp [T, N] vary with the cutoff."""


def cutoffs_below(scores, grid):
    """int32, shape of scores: how many cutoffs of the ascending grid [T] are strictly below each score.

    score > grid[j] exactly when j < result; NaN scores get 0. Binary search over the grid padded
    with +inf (never exceeded) to 2**L - 1 cutoffs: L = T.bit_length() steps.
    """
    levels = grid.shape[0].bit_length()
    padded = jnp.concatenate([grid, jnp.full((2**levels - 1 - grid.shape[0],), jnp.inf, grid.dtype)])
    found = jnp.zeros(scores.shape, jnp.int32)
    for level in reversed(range(levels)):
        probe = found + (1 << level)  # at most 2**levels - 1: always a valid position
        found = jnp.where(scores > padded.at[probe - 1].get(mode="promise_in_bounds"), probe, found)
    return found


def counts_above(buckets, truth, size: int):
    """(tp, pp) int32 [size, R]: for each column r of buckets/truth [K, R] (buckets in 0..size), how
    many entries (tp: of them, true ones) have a bucket number above j, for every j < size.

    One histogram of (size + 1) * R * 2 int32 bins (flat bin numbers: keep that below 2**31), then
    a reverse associative scan over the buckets (XLA:CPU's cumsum is several times slower).
    """
    groups = buckets.shape[1]
    bins = (buckets * groups + jnp.arange(groups)) * 2 + truth
    hist = jnp.bincount(bins.ravel(), length=(size + 1) * groups * 2).reshape(size + 1, groups, 2)
    above = jax.lax.associative_scan(jnp.add, hist[1:], reverse=True)  # [size, R, 2]
    return above[..., 1], above[..., 0] + above[..., 1]


def bucket_table(probs, truth, w, thresholds) -> Counts:
    """Counts table (PER_CUTOFF axes) of probs [N, C] > each of thresholds [T], by bucketing."""
    cutoffs = jnp.where(jnp.isnan(thresholds), jnp.inf, thresholds)  # both are never exceeded
    order = jnp.argsort(cutoffs)
    grid = cutoffs[order]
    keep = (w > 0)[:, None]
    truth = truth & keep
    buckets = jnp.where(keep, cutoffs_below(probs, grid), 0)
    rank = jnp.argsort(order)  # where each given cutoff sits in the sorted grid
    size = thresholds.shape[0]
    tp, pp = (a[rank] for a in counts_above(buckets, truth, size))
    row_tp, row_pp = (a[rank] for a in counts_above(buckets.T, truth.T, size))
    pos, row_pos = jnp.sum(truth, axis=0, dtype=jnp.int32), jnp.sum(truth, axis=1, dtype=jnp.int32)
    return Counts(tp, pp, pos, row_tp, row_pp, row_pos, jnp.sum(w > 0, dtype=jnp.int32))


def sweep_table(probs, targs, thresholds, mask, method: str = "bucket") -> Counts:
    """Counts table (PER_CUTOFF axes) of the decisions probs > t for every t in thresholds [T]."""
    truth, w = targs != 0, row_weights(mask, probs.shape[0])
    if method == "bucket":
        return bucket_table(probs, truth, w, thresholds)
    return jax.vmap(lambda t: counts_from_bools(probs > t, truth, w), out_axes=PER_CUTOFF)(thresholds)


def per_cutoff(metric, table: Counts):
    """metric (a function of Counts) at every cutoff of a sweep table: one jax.vmap over [T]."""
    return jax.vmap(metric, in_axes=(PER_CUTOFF,))(table)


def sweep_curves(probs, targs, thresholds, mask, metrics: tuple[str, ...], method: str = "bucket") -> dict:
    """{name: [T] values of SWEEP_METRICS[name] at every cutoff}; pure, for use inside jit."""
    table = sweep_table(probs, targs, thresholds, mask, method)
    return {m: per_cutoff(SWEEP_METRICS[m], table) for m in metrics}


@partial(jax.jit, static_argnames=("sigmoid", "metric", "method"))
def _sweep(preds, targs, thresholds, mask, sigmoid, metric, method):
    probs = jax.nn.sigmoid(preds) if sigmoid else preds
    curve = sweep_curves(probs, targs, thresholds, mask, (metric,), method)[metric]
    best = jnp.argmax(curve)
    return curve, thresholds[best], curve[best]


def threshold_sweep(preds, targs, thresholds, sigmoid=False, metric="accuracy", mask=None, method="bucket"):
    """Evaluate `metric` at every cutoff in one vmap: returns (curve [T], best threshold, best value).

    preds, targs: [N, C]; thresholds: [T]; metric: 'accuracy' (fastai accuracy_multi),
    'f1_micro', 'f1_macro', 'f1_samples' (sklearn semantics, 0/0 -> 0); mask: optional bool [N].
    Ties go to the lowest-index threshold. method: 'bucket' | 'compare' (same numbers, see the
    module doc). Shapes and (sigmoid, metric, method) are static; the grid values are traced.
    """
    preds, targs, mask = scores_and_targets(preds, targs, mask, where="threshold_sweep")
    thresholds = threshold_grid(thresholds, where="threshold_sweep")
    choice(metric, SWEEP_METRICS, what="sweep metric")
    choice(method, METHODS, what="sweep method")
    return _sweep(preds, targs, thresholds, mask, sigmoid=sigmoid, metric=metric, method=method)


@partial(jax.jit, static_argnames=("sigmoid", "metric", "method"))
def _per_class(preds, targs, thresholds, mask, sigmoid, metric, method):
    probs = jax.nn.sigmoid(preds) if sigmoid else preds
    table = per_cutoff(PER_CLASS_METRICS[metric], sweep_table(probs, targs, thresholds, mask, method))  # [T, C]
    return thresholds[jnp.argmax(table, axis=0)]


def per_class_thresholds(
    preds, targs, thresholds=DEFAULT_THRESHOLDS, metric="f1", sigmoid=False, mask=None, method="bucket"
):
    """float32 [C]: for each class, the grid cutoff maximising that class's F1 (or accuracy).

    preds, targs: [N, C] validation predictions and multi-hot targets; thresholds: [T] grid;
    metric: 'f1' (binary F1, 0 when undefined) or 'accuracy'. Ties go to the lowest cutoff, so a
    class without positives (F1 0 everywhere) gets the lowest one under 'f1'. method: as threshold_sweep.
    """
    preds, targs, mask = scores_and_targets(preds, targs, mask, where="per_class_thresholds")
    thresholds = threshold_grid(thresholds, where="per_class_thresholds")
    choice(metric, PER_CLASS_METRICS, what="per-class metric")
    choice(method, METHODS, what="sweep method")
    return _per_class(preds, targs, thresholds, mask, sigmoid=sigmoid, metric=metric, method=method)


@jax.jit
def _apply(preds, thresholds):
    return preds > thresholds


def apply_thresholds(preds, thresholds):
    """bool [N, C]: preds > thresholds, with thresholds a scalar or one cutoff per class [C]."""
    ps, ts = static_shape(preds), static_shape(thresholds)
    if len(ps) != 2 or ts not in ((), (ps[1],)):
        raise PmlError(
            f"apply_thresholds: need preds [N, C] and thresholds [C] or a scalar; got {ps} and {ts}"
        )
    return _apply(preds, jnp.asarray(thresholds, jnp.float32))
