"""TensorFlow for the input pipelines only: imported on first use, kept off the accelerators."""

from __future__ import annotations

import os
import sys

_ACCELERATORS_HIDDEN = False

# TF only decodes and crops here: its oneDNN float kernels are not needed, and their start-up
# notice is noise in every run's output (set before TF is first imported).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tf():
    """TensorFlow with GPUs/TPUs hidden from it, so JAX owns the accelerators.

    TensorFlow's `__init__` imports Keras eagerly (to register its optimizers for SavedModel), ~1 s
    of the ~4 s import here, and the pipelines never use Keras: unless Keras is already loaded, that
    import is refused (TF catches the ImportError) and `keras` stays importable afterwards.
    """
    global _ACCELERATORS_HIDDEN
    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        sys.modules["keras"] = None  # an ImportError for `import keras...` while TensorFlow loads
        try:
            import tensorflow  # noqa: F401
        finally:
            del sys.modules["keras"]
    import tensorflow as tf

    if not _ACCELERATORS_HIDDEN:
        for kind in ("GPU", "TPU"):
            try:
                tf.config.set_visible_devices([], kind)
            except (RuntimeError, ValueError):  # already initialised, or no such device type
                pass
        _ACCELERATORS_HIDDEN = True
    return tf
