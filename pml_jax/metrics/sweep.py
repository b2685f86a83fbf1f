"""Choosing cutoffs: a vmapped sweep of one global threshold, and per-class thresholds.

Every cutoff t decides "score > t" (strict, as fastai); one jax.vmap over the grid gives the
confusion counts at every cutoff, by one of two exact methods:
  'compare': compare all N x C scores with each cutoff, O(T N C);
  'sort':    sort each class's scores once, then binary-search each cutoff, O(N C log N + T C log N)
             (f1_samples still needs per-row counts, O(T N C)).
'auto' picks 'sort' for grids longer than SORT_ABOVE (on CPU, XLA's sort of 5000 x 20 scores
costs about as much as 100 compare passes). Ties in the swept value go to the first (lowest-index)
threshold of the grid, as argmax does.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

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

METHODS = ("auto", "compare", "sort")
SORT_ABOVE = 100
"""'auto' sorts when the grid has more cutoffs than this."""


class SortedScores(NamedTuple):
    """Scores prepared once so that the counts at any cutoff cost O(C log N) (+ O(N C) for row counts).

    keys [N, C]: scores, -inf for uncounted rows and NaN (never above a cutoff, as with '>');
    truth [N, C]: positives of counted rows; columns [C, N]: keys sorted ascending per class;
    cum_pos [C, N + 1]: positives among the k lowest keys of each class; n: counted rows.
    """

    keys: jax.Array
    truth: jax.Array
    columns: jax.Array
    cum_pos: jax.Array
    n: jax.Array


def sort_scores(probs, truth, w) -> SortedScores:
    """SortedScores of probs [N, C] (probabilities or any scores), truth bool [N, C], row weights w [N]."""
    keep = (w > 0)[:, None]
    keys = jnp.where(keep & ~jnp.isnan(probs), probs, -jnp.inf).astype(jnp.float32)
    truth = truth & keep
    order = jnp.argsort(keys, axis=0)
    columns = jnp.take_along_axis(keys, order, axis=0).T
    cum = jnp.cumsum(jnp.take_along_axis(truth, order, axis=0), axis=0, dtype=jnp.int32).T
    cum_pos = jnp.concatenate([jnp.zeros((cum.shape[0], 1), jnp.int32), cum], axis=1)
    return SortedScores(keys, truth, columns, cum_pos, jnp.sum(w > 0, dtype=jnp.int32))


def counts_at(s: SortedScores, t) -> Counts:
    """Counts of the decisions score > t, equal to counts_from_bools; per-class parts by binary search."""
    at_or_below = jax.vmap(lambda col: jnp.searchsorted(col, t, side="right"))(s.columns)  # [C]
    pos = s.cum_pos[:, -1]
    tp = pos - jnp.take_along_axis(s.cum_pos, at_or_below[:, None], axis=1)[:, 0]
    pp = s.columns.shape[1] - at_or_below
    pred = s.keys > t  # row counts: O(N C), removed by XLA when no metric reads them
    row_tp = jnp.sum(pred & s.truth, axis=1, dtype=jnp.int32)
    row_pp = jnp.sum(pred, axis=1, dtype=jnp.int32)
    row_pos = jnp.sum(s.truth, axis=1, dtype=jnp.int32)
    return Counts(tp.astype(jnp.int32), pp.astype(jnp.int32), pos, row_tp, row_pp, row_pos, s.n)


def counts_per_cutoff(probs, targs, thresholds, mask, method: str = "auto"):
    """A function t -> Counts of the decisions probs > t, for jax.vmap over `thresholds` [T]."""
    if method == "auto":
        method = "sort" if thresholds.shape[0] > SORT_ABOVE else "compare"
    truth, w = targs != 0, row_weights(mask, probs.shape[0])
    if method == "compare":
        return lambda t: counts_from_bools(probs > t, truth, w)
    s = sort_scores(probs, truth, w)
    return lambda t: counts_at(s, t)


def sweep_curves(probs, targs, thresholds, mask, metrics: tuple[str, ...], method: str = "auto") -> dict:
    """{name: [T] values of SWEEP_METRICS[name] at every cutoff} from one vmap; pure, for use inside jit."""
    counts = counts_per_cutoff(probs, targs, thresholds, mask, method)
    return jax.vmap(lambda t: {m: SWEEP_METRICS[m](counts(t)) for m in metrics})(thresholds)


@partial(jax.jit, static_argnames=("sigmoid", "metric", "method"))
def _sweep(preds, targs, thresholds, mask, sigmoid, metric, method):
    probs = jax.nn.sigmoid(preds) if sigmoid else preds
    curve = sweep_curves(probs, targs, thresholds, mask, (metric,), method)[metric]
    best = jnp.argmax(curve)
    return curve, thresholds[best], curve[best]


def threshold_sweep(preds, targs, thresholds, sigmoid=False, metric="accuracy", mask=None, method="auto"):
    """Evaluate `metric` at every cutoff in one vmap: returns (curve [T], best threshold, best value).

    preds, targs: [N, C]; thresholds: [T]; metric: 'accuracy' (fastai accuracy_multi),
    'f1_micro', 'f1_macro', 'f1_samples' (sklearn semantics, 0/0 -> 0); mask: optional bool [N].
    Ties go to the lowest-index threshold. method: 'auto' | 'compare' | 'sort' (same numbers, see
    the module doc). Shapes and (sigmoid, metric, method) are static; the grid values are traced.
    """
    preds, targs, mask = scores_and_targets(preds, targs, mask, where="threshold_sweep")
    thresholds = threshold_grid(thresholds, where="threshold_sweep")
    choice(metric, SWEEP_METRICS, what="sweep metric")
    choice(method, METHODS, what="sweep method")
    return _sweep(preds, targs, thresholds, mask, sigmoid=sigmoid, metric=metric, method=method)


@partial(jax.jit, static_argnames=("sigmoid", "metric", "method"))
def _per_class(preds, targs, thresholds, mask, sigmoid, metric, method):
    probs = jax.nn.sigmoid(preds) if sigmoid else preds
    counts = counts_per_cutoff(probs, targs, thresholds, mask, method)
    table = jax.vmap(lambda t: PER_CLASS_METRICS[metric](counts(t)))(thresholds)  # [T, C]
    return thresholds[jnp.argmax(table, axis=0)]


def per_class_thresholds(
    preds, targs, thresholds=DEFAULT_THRESHOLDS, metric="f1", sigmoid=False, mask=None, method="auto"
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
