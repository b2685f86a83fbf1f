"""Epoch-level evaluation: every metric of a validation set in one jitted program.

The predictions come gathered on device (pml_jax.train.inference.predict_batches), so the eval
loop never waits on a host round-trip per batch; one device_get fetches the summary at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pml_jax.metrics._inputs import scores_and_targets, threshold_grid
from pml_jax.metrics.classification import accuracy, counts_from_bools, hamming, prf, row_weights
from pml_jax.metrics.ranking import nanmean, per_class_ap
from pml_jax.metrics.sweep import DEFAULT_THRESHOLDS, sweep_curves


@jax.jit
def _summary(probs, targs, mask, thresh, thresholds):
    counts = counts_from_bools(probs > thresh, targs != 0, row_weights(mask, probs.shape[0]))
    out = {"accuracy_multi": accuracy(counts), "hamming_loss": hamming(counts)}
    for average in ("micro", "macro", "samples"):
        p, r, f1 = prf(counts, average)
        out |= {f"precision_{average}": p, f"recall_{average}": r, f"f1_{average}": f1}
    for kind, name in (("sklearn", "ap"), ("voc07", "voc07_ap")):
        out[name] = per_class_ap(probs, targs, mask, kind=kind)
        out[name.replace("ap", "mAP")] = nanmean(out[name])
    out["sweep_thresholds"] = thresholds
    curves = sweep_curves(probs, targs, thresholds, mask, ("accuracy", "f1_micro", "f1_macro"))
    out |= {f"sweep_{name}": curve for name, curve in curves.items()}
    best = jnp.argmax(out["sweep_accuracy"])
    out["best_thresh"], out["best_accuracy"] = thresholds[best], out["sweep_accuracy"][best]
    return out


def epoch_metrics(probs, targs, mask=None, thresh=0.5, thresholds=DEFAULT_THRESHOLDS):
    """Every metric of a validation set, on device, as a dict of JAX arrays.

    probs, targs: [N, C] probabilities and multi-hot targets; mask: bool [N] (rows with False are
    padding). Keys: accuracy_multi, hamming_loss, precision_/recall_/f1_{micro,macro,samples} at
    `thresh`; ap, voc07_ap [C] (NaN: class without positives) and their means over the classes
    with positives, mAP and voc07_mAP; sweep_thresholds [T] and the curves over it sweep_accuracy,
    sweep_f1_micro, sweep_f1_macro [T]; best_thresh, best_accuracy (first maximum of the accuracy).
    """
    probs, targs, mask = scores_and_targets(probs, targs, mask, where="epoch_metrics")
    thresholds = threshold_grid(thresholds, where="epoch_metrics")
    return _summary(probs, targs, mask, jnp.float32(thresh), thresholds)
