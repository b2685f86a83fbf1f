"""Resize a batch of crop windows on the device: Pillow's BILINEAR as two matrix products, in jax.

The host cuts each train crop window out of its decoded image (shrunk by an integer box filter
when it is much larger than needed, see pml_jax.data.host_crops) and pads it into a fixed buffer;
`resize_crops` turns the whole buffer batch into `size` x `size` images inside jit. Pure jax (no
TensorFlow): it runs wherever the train step runs.

Pillow's BILINEAR resize of a w-pixel row to n pixels from the box [x0, x0 + L): scale = L/n,
filter width s = max(scale, 1); output pixel i is centred at c_i = x0 + (i + 0.5)·scale and
weighs input pixel x by the triangle max(0, 1 - |x + 0.5 - c_i| / s), over the pixels
0 <= x < w only, normalised to sum 1. That is the antialiased linear kernel of
`jax.image.scale_and_translate`, but that function normalises over the buffer's static width, so
its padding would leak into the edge pixels; here each row of weights stops at the crop's true
size. Pillow rounds to uint8 after each pass and uses fixed-point weights; one float32 pass
pair and one rounding differs from it by at most a level on a few pixels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pml_jax.data.host_crops import CROP_KEYS


def bilinear_weights(true_size, box_size, out_size: int, buffer_size: int) -> jax.Array:
    """Pillow BILINEAR weights along one axis: float32 [out_size, buffer_size].

    true_size: int scalar, pixels of the crop present in the buffer (from index 0); box_size:
    float scalar, the crop's extent in those pixels (<= true_size; the box starts at 0).
    Columns >= true_size get weight 0.
    """
    scale = jnp.asarray(box_size, jnp.float32) / out_size
    width = jnp.maximum(scale, 1.0)
    centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
    x = jnp.arange(buffer_size, dtype=jnp.float32) + 0.5
    w = jnp.maximum(1.0 - jnp.abs(x[None, :] - centre[:, None]) / width, 0.0)
    w = jnp.where(jnp.arange(buffer_size)[None, :] < true_size, w, 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


def _resize_one(image, hw, box_hw, flip, size: int):
    """uint8 [Hb, Wb, 3] buffer -> float32 [size, size, 3] (see resize_crops)."""
    rows = bilinear_weights(hw[0], box_hw[0], size, image.shape[0])
    cols = bilinear_weights(hw[1], box_hw[1], size, image.shape[1])
    cols = jnp.where(flip, cols[::-1], cols)
    x = image.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST  # TPUs and TF32 GPUs would otherwise round the pixels to ~8-10 bits
    x = jnp.einsum("hwc,pw->hpc", x, cols, precision=hi)
    return jnp.einsum("oh,hpc->opc", rows, x, precision=hi)


def resize_crops(images, hw, box_hw, flip, size: int) -> jax.Array:
    """Pillow-BILINEAR resize of each padded crop, then the optional left-right flip.

    images: uint8 [B, Hb, Wb, 3], crop i in images[i, :hw[i, 0], :hw[i, 1]]; hw: int32 [B, 2];
    box_hw: float32 [B, 2] the crop's extent in buffer pixels (hw, or the original extent / the
    host's integer shrink factor); flip: bool [B]. Returns uint8 [B, size, size, 3] (round half up).
    """
    out = jax.vmap(functools.partial(_resize_one, size=size))(images, hw, box_hw, flip)
    return jnp.clip(jnp.floor(out + 0.5), 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames="size")
def finish_batch(batch: dict, size: int) -> dict:
    """A device-crop batch (image buffer + CROP_KEYS) -> the train step's batch: 'image' uint8
    [B, size, size, 3], the crop keys dropped, every other entry unchanged."""
    out = {k: v for k, v in batch.items() if k not in CROP_KEYS}
    out["image"] = resize_crops(batch["image"], batch["hw"], batch["box_hw"], batch["flip"], size)
    return out
