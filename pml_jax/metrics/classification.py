"""Metrics of hard multi-label decisions at a cutoff: fastai's accuracy_multi, precision/recall/F1, hamming.

Conventions shared by every function here:
- predictions [N, C] are scores; a class is predicted when score > thresh (strict, as fastai);
  `sigmoid=True` first maps logits to probabilities.
- targets [N, C] are multi-hot; any non-zero value is a positive (fastai's `targ.bool()`).
- mask [N] bool (optional) marks the real rows of a padded batch; rows with False are ignored.
- precision / recall / F1 follow scikit-learn on multilabel indicator arrays with its default
  `zero_division='warn'`, i.e. a 0/0 ratio counts as 0 (sklearn's numeric result, without the warning).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pml_jax.metrics._inputs import choice, scores_and_targets

AVERAGES = ("micro", "macro", "samples", None)


def row_weights(mask, n: int):
    """int32 [N]: 1 for rows that count, 0 for padding (all ones when mask is None)."""
    if mask is None:
        return jnp.ones((n,), jnp.int32)
    return jnp.asarray(mask, jnp.int32)


def safe_div(num, den):
    """num / den elementwise, 0 where den == 0 (sklearn's zero_division result); float32."""
    num = jnp.asarray(num, jnp.float32)
    den = jnp.asarray(den, jnp.float32)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


class Counts(NamedTuple):
    """Confusion counts of one cutoff over the counted rows (int32).

    Per class [C]: tp (true positives), pp (predicted positives), pos (actual positives).
    Per row [N]: row_tp, row_pp, row_pos. n: number of counted rows (scalar).
    """

    tp: jax.Array
    pp: jax.Array
    pos: jax.Array
    row_tp: jax.Array
    row_pp: jax.Array
    row_pos: jax.Array
    n: jax.Array


def counts_from_bools(pred, true, w) -> Counts:
    """Counts of decisions pred vs truth true (bool [N, C]) over the rows with weight w [N] > 0."""
    keep = (w > 0)[:, None]
    pred, true = pred & keep, true & keep
    hit = pred & true
    tp, pp, pos = (jnp.sum(a, axis=0, dtype=jnp.int32) for a in (hit, pred, true))
    row_tp, row_pp, row_pos = (jnp.sum(a, axis=1, dtype=jnp.int32) for a in (hit, pred, true))
    return Counts(tp, pp, pos, row_tp, row_pp, row_pos, jnp.sum(w > 0, dtype=jnp.int32))


def class_accuracy(c: Counts):
    """float32 [C]: fraction of counted rows decided correctly, per class (tp + tn) / n."""
    return safe_div(c.n - c.pos - c.pp + 2 * c.tp, c.n)


def accuracy(c: Counts):
    """fastai accuracy_multi from counts: correct entries / (n * C); NaN when no row is counted."""
    return jnp.sum(c.n - c.pos - c.pp + 2 * c.tp) / (c.n * c.tp.shape[0]).astype(jnp.float32)


def hamming(c: Counts):
    """sklearn hamming_loss from counts: wrong entries (fp + fn) / (n * C)."""
    return jnp.sum(c.pp + c.pos - 2 * c.tp) / (c.n * c.tp.shape[0]).astype(jnp.float32)


def prf(c: Counts, average):
    """(precision, recall, F1) from counts, sklearn semantics with 0/0 -> 0.

    average: 'micro' (pool all entries), 'macro' (unweighted mean over classes), 'samples'
    (mean over counted rows), None (per class, each [C]).
    """
    if average == "samples":
        tp, pp, pos = c.row_tp, c.row_pp, c.row_pos
    elif average == "micro":
        tp, pp, pos = jnp.sum(c.tp), jnp.sum(c.pp), jnp.sum(c.pos)
    else:
        tp, pp, pos = c.tp, c.pp, c.pos
    scores = (safe_div(tp, pp), safe_div(tp, pos), safe_div(2 * tp, pp + pos))
    if average == "macro":
        return tuple(jnp.mean(s) for s in scores)
    if average == "samples":  # rows that are not counted have all-zero counts, so score 0
        return tuple(jnp.sum(s) / c.n.astype(jnp.float32) for s in scores)
    return scores


def decide(preds, thresh, sigmoid: bool):
    """bool [N, C]: (sigmoid(preds) if sigmoid else preds) > thresh (thresh: scalar or broadcastable)."""
    probs = jax.nn.sigmoid(preds) if sigmoid else preds
    return probs > thresh


@partial(jax.jit, static_argnames=("sigmoid",))
def _accuracy_multi(inp, targ, thresh, mask, sigmoid):
    w = row_weights(mask, inp.shape[0])
    return accuracy(counts_from_bools(decide(inp, thresh, sigmoid), targ != 0, w))


def accuracy_multi(inp, targ, thresh=0.5, sigmoid=True, mask=None):
    """fastai's accuracy_multi: mean((sigmoid(inp) > thresh) == targ.bool()) over all elements.

    inp, targ: [N, C] (or [N]); thresh: float (traced, no recompile per value); sigmoid: static;
    mask: optional bool [N], rows with False are ignored. Returns a float32 scalar in [0, 1]
    (NaN when no row is counted).
    """
    inp, targ, mask = scores_and_targets(inp, targ, mask, where="accuracy_multi")
    return _accuracy_multi(inp, targ, jnp.float32(thresh), mask, sigmoid=sigmoid)


@partial(jax.jit, static_argnames=("sigmoid", "average"))
def _precision_recall_f1(preds, targs, thresh, mask, sigmoid, average):
    w = row_weights(mask, preds.shape[0])
    return prf(counts_from_bools(decide(preds, thresh, sigmoid), targs != 0, w), average)


def precision_recall_f1(preds, targs, thresh=0.5, average="micro", sigmoid=False, mask=None):
    """(precision, recall, F1) at `thresh`, as sklearn's precision/recall/f1_score(average=...).

    preds, targs: [N, C]; average: 'micro' | 'macro' | 'samples' (scalars) or None (each [C]);
    0/0 ratios are 0 (sklearn's zero_division default). sigmoid=False: preds are probabilities.
    """
    preds, targs, mask = scores_and_targets(preds, targs, mask, where="precision_recall_f1")
    choice(average, AVERAGES, what="average")
    return _precision_recall_f1(preds, targs, jnp.float32(thresh), mask, sigmoid=sigmoid, average=average)


@partial(jax.jit, static_argnames=("sigmoid",))
def _hamming_loss(preds, targs, thresh, mask, sigmoid):
    w = row_weights(mask, preds.shape[0])
    return hamming(counts_from_bools(decide(preds, thresh, sigmoid), targs != 0, w))


def hamming_loss(preds, targs, thresh=0.5, sigmoid=False, mask=None):
    """sklearn's hamming_loss of the decisions preds > thresh: fraction of wrong entries, scalar in [0, 1]."""
    preds, targs, mask = scores_and_targets(preds, targs, mask, where="hamming_loss")
    return _hamming_loss(preds, targs, jnp.float32(thresh), mask, sigmoid=sigmoid)
