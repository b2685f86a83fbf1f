"""Epoch-level evaluation: gather per-batch device arrays, compute every metric once.

Batches stay on device (a list of arrays, concatenated once per epoch), so the eval loop
never waits on a host round-trip per batch; one device_get fetches the summary at the end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pml_jax.errors import PmlError
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


class MetricAccumulator:
    """Collects (probs [B, C], targets [B, C], mask [B]) batches on device for one epoch.

    update() only appends references to device arrays (no transfer, no sync); compute()
    concatenates once, evaluates epoch_metrics over the rows whose mask is True and fetches
    the result to host as NumPy values. Batches must share C; B may vary.
    """

    def __init__(self):
        self._batches: list[tuple[jax.Array, jax.Array, jax.Array]] = []

    def reset(self) -> None:
        """Forget all gathered batches (start of an epoch)."""
        self._batches = []

    def update(self, probs, targs, mask=None) -> None:
        """Add one batch; mask None counts every row."""
        probs, targs, mask = scores_and_targets(probs, targs, mask, where="MetricAccumulator.update")
        if mask is None:
            mask = jnp.ones((probs.shape[0],), bool)
        if self._batches and probs.shape[1] != self._batches[0][0].shape[1]:
            raise PmlError(
                f"MetricAccumulator.update: batch has {probs.shape[1]} classes, "
                f"earlier batches have {self._batches[0][0].shape[1]}"
            )
        self._batches.append((probs, targs, mask))

    def gathered(self):
        """(probs [N, C], targets [N, C], mask [N]) of every batch so far, on device."""
        if not self._batches:
            raise PmlError("MetricAccumulator: no batch was added before compute()")
        return tuple(jnp.concatenate(parts) for parts in zip(*self._batches))

    def compute(self, thresh=0.5, thresholds=DEFAULT_THRESHOLDS) -> dict:
        """epoch_metrics of everything gathered, fetched to host in one transfer (NumPy values)."""
        probs, targs, mask = self.gathered()
        return jax.device_get(epoch_metrics(probs, targs, mask, thresh, thresholds))
