"""pml_jax: fastai's multi-label image classification workflow on JAX, Flax, optax and tf.data.

The public names below load lazily, so `import pml_jax` (and `pml_jax.metrics`) never pulls in
TensorFlow, Flax, pandas or matplotlib until something that needs them is used.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # metrics (jax + numpy only)
    "accuracy_multi": "pml_jax.metrics",
    "threshold_sweep": "pml_jax.metrics",
    "per_class_thresholds": "pml_jax.metrics",
    "apply_thresholds": "pml_jax.metrics",
    "average_precision": "pml_jax.metrics",
    "mean_average_precision": "pml_jax.metrics",
    "voc07_average_precision": "pml_jax.metrics",
    "precision_recall_f1": "pml_jax.metrics",
    "hamming_loss": "pml_jax.metrics",
    "epoch_metrics": "pml_jax.metrics",
    # models and weights
    "create_model": "pml_jax.models",
    "create_head": "pml_jax.models",
    "resnet": "pml_jax.models",
    "port_torchvision": "pml_jax.models",
    "load_state_dict": "pml_jax.models",
    # data
    "load_source": "pml_jax.data.sources",
    "LabelledImages": "pml_jax.data.dataset",
    "DataLoaders": "pml_jax.data.loaders",
    "show_batch": "pml_jax.data.show_batch",
    # training
    "Learner": "pml_jax.train.learner",
    "Config": "pml_jax.config",
    "preset": "pml_jax.config",
    "PmlError": "pml_jax.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pml_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
