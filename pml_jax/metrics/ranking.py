"""Ranking metrics per class: scikit-learn's average precision, PASCAL VOC 2007's 11-point AP, mAP.

Scores [N, C] may be logits or probabilities (only their order matters; note that float32
sigmoid saturates large logits to equal probabilities, which then tie). Targets [N, C]: non-zero
is positive. mask [N] bool drops padded rows. A class without positives among the counted rows
has no defined AP: these functions return NaN for it (scikit-learn 1.9 returns 0.0 with a warning)
and the mAP functions average over the remaining classes (NaN if none is left).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from pml_jax.metrics._inputs import scores_and_targets
from pml_jax.metrics.classification import row_weights


def _ranked_counts(scores, truth, w):
    """Stable-sort one class by descending score (ties keep row order).

    Returns (sorted -scores, cumulative TP, cumulative FP), each [N].

    Rows with weight 0 (padding) may sit anywhere in the order: they add to neither count.
    """
    keys = -scores.astype(jnp.float32)
    order = jnp.argsort(keys, stable=True)
    pos = (truth & (w > 0)).astype(jnp.int32)[order]
    neg = (~truth & (w > 0)).astype(jnp.int32)[order]
    return keys[order], jnp.cumsum(pos), jnp.cumsum(neg)


def _ap_one(scores, truth, w):
    """sklearn average_precision_score of one class: sum over distinct cutoffs of (R_k - R_k-1) * P_k."""
    keys, tp, fp = _ranked_counts(scores, truth, w)
    last_of_tie = jnp.append(keys[1:] != keys[:-1], True)  # sklearn groups equal scores
    precision = tp / jnp.maximum(tp + fp, 1).astype(jnp.float32)
    tp_ends = jnp.where(last_of_tie, tp, 0)
    tp_before = jnp.concatenate([jnp.zeros((1,), tp.dtype), jax.lax.cummax(tp_ends)[:-1]])
    gained = jnp.where(last_of_tie, tp - tp_before, 0)
    n_pos = tp[-1]
    ap = jnp.sum(gained * precision) / jnp.maximum(n_pos, 1).astype(jnp.float32)
    return jnp.where(n_pos > 0, ap, jnp.nan)


def _voc07_one(scores, truth, w):
    """VOCdevkit VOCevalcls (2007): mean over t = 0, 0.1, .., 1 of max precision at recall >= t.

    As the devkit, no grouping of ties: rows are ranked by a stable sort of -score (Matlab's
    sort), and precision/recall are read at every rank. recall >= k/10 is tested exactly
    (10 TP >= k P) so a recall of exactly 0.3 counts for t = 0.3.
    """
    _, tp, fp = _ranked_counts(scores, truth, w)
    precision = tp / jnp.maximum(tp + fp, 1).astype(jnp.float32)
    n_pos = tp[-1]
    k = jnp.arange(11, dtype=jnp.int32)[:, None]
    reached = 10 * tp[None, :] >= k * n_pos  # [11, N]
    ap = jnp.mean(jnp.max(jnp.where(reached, precision[None, :], 0.0), axis=1))
    return jnp.where(n_pos > 0, ap, jnp.nan)


_ONE_CLASS = {"sklearn": _ap_one, "voc07": _voc07_one}


@partial(jax.jit, static_argnames=("kind",))
def per_class_ap(scores, targs, mask, kind="sklearn"):
    """float32 [C] AP of every class, kind 'sklearn' or 'voc07'; pure, on checked [N, C] inputs, mask [N] | None."""
    w = row_weights(mask, scores.shape[0])
    return jax.vmap(_ONE_CLASS[kind], in_axes=(1, 1, None))(scores, targs != 0, w)


def average_precision(scores, targs, mask=None):
    """float32 [C]: sklearn's average_precision_score(targs[:, c], scores[:, c]); NaN without positives."""
    scores, targs, mask = scores_and_targets(scores, targs, mask, where="average_precision")
    return per_class_ap(scores, targs, mask, kind="sklearn")


def voc07_average_precision(scores, targs, mask=None):
    """float32 [C]: PASCAL VOC 2007 11-point interpolated AP per class; NaN without positives."""
    scores, targs, mask = scores_and_targets(scores, targs, mask, where="voc07_average_precision")
    return per_class_ap(scores, targs, mask, kind="voc07")


def mean_average_precision(scores, targs, mask=None, voc07=False):
    """float32 scalar: mean AP over the classes with positives (sklearn AP; VOC07 11-point if voc07)."""
    per_class = voc07_average_precision if voc07 else average_precision
    return nanmean(per_class(scores, targs, mask))


@jax.jit
def nanmean(values):
    """Mean of the non-NaN entries of a [C] array; NaN when all are NaN (no warning)."""
    ok = ~jnp.isnan(values)
    return jnp.sum(jnp.where(ok, values, 0.0)) / jnp.where(ok.any(), ok.sum(), jnp.nan)
