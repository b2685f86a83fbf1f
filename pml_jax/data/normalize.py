"""ImageNet statistics and the on-device normalisation of uint8 batches (jax only, no TF)."""

import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # RGB, in [0, 1] units
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(images, dtype=jnp.float32):
    """uint8 [..., H, W, 3] -> (x/255 - mean)/std in `dtype` (computed in float32), as fastai's
    `Normalize.from_stats(*imagenet_stats)` after `IntToFloatTensor`."""
    x = jnp.asarray(images, jnp.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)
