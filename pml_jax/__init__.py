"""pml_jax: fastai's multi-label image classification workflow on JAX, Flax, optax and tf.data."""

__version__ = "0.1.0"
