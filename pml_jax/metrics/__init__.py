"""Jitted multi-label metrics: fastai's accuracy_multi, sklearn-exact AP/F1, VOC07 AP, threshold sweeps.

Needs only jax and numpy (no TF, flax, pandas or matplotlib at import).
"""

from pml_jax.metrics.classification import accuracy_multi, hamming_loss, precision_recall_f1
from pml_jax.metrics.ranking import (
    average_precision,
    mean_average_precision,
    voc07_average_precision,
)
from pml_jax.metrics.stream import epoch_metrics
from pml_jax.metrics.sweep import (
    DEFAULT_THRESHOLDS,
    apply_thresholds,
    per_class_thresholds,
    threshold_sweep,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "accuracy_multi",
    "apply_thresholds",
    "average_precision",
    "epoch_metrics",
    "hamming_loss",
    "mean_average_precision",
    "per_class_thresholds",
    "precision_recall_f1",
    "threshold_sweep",
    "voc07_average_precision",
]
