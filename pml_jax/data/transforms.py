"""fastai 2.8's `RandomResizedCrop` as TensorFlow graph ops (crop maths in TF, resize by Pillow).

Train (fastai `split_idx=0`): for up to 10 tries draw area = U(min_scale, max_scale)·w·h and
ratio = exp(U(log r0, log r1)); nw = round(sqrt(area·ratio)), nh = round(sqrt(area/ratio))
(Python `round`: half to even); the first try with nw <= w and nh <= h wins and its top-left is
(randint(0, w-nw), randint(0, h-nh)), both bounds inclusive. If no try fits: centre crop of the
whole image with its ratio clamped to [r0, r1] (sides truncated with `int`). The crop is then
resized to size x size with Pillow BILINEAR.
Valid (`split_idx=1`): squish the whole image to size+xtra, xtra = ceil(size·val_xtra/8)·8,
then centre crop `size` (top-left (xtra//2, xtra//2)).

Randomness enters only as uniforms in [0, 1) (`N_UNIFORMS` per image, float64): columns
2t, 2t+1 drive try t's scale and ratio, column 20 the left and column 21 the top offset
(randint(a, b) = a + floor(u·(b-a+1))), column 22 the optional flip.

The resize is Pillow's own BILINEAR through tf.numpy_function: the exact bits fastai gets.
TensorFlow is imported when a function here is first called, not with the module.

Reduced-scale JPEG decoding (`reduced_jpeg_plan`, the pipeline's `fast_decode`): libjpeg's IDCT
scaling decodes at 1/r of the resolution (r in JPEG_RATIOS) for little more than the entropy
decoding. The crop window stays fastai's (original pixels); it maps to a fractional box of the
1/r image and Pillow's BILINEAR resamples that box (`pil_resize(..., box=)`), so the geometry is
exact and only the pixel source differs: a DCT-downscaled image instead of the full one.
TF-only versions were measured against Pillow 13 and dropped: tf.image.resize(antialias=True)
(the same triangle filter, float32 weights, one rounding) is off by 1 on ~10-20% of values and
costs as much CPU as Pillow through numpy_function; emulating Pillow's two rounded passes
(~0.4% off by 1) costs twice that; a bit-exact fixed-point port (gather / sparse matmul) was
3-10x slower.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pml_jax.data.tf_cpu import import_tf

N_TRIES = 10
JPEG_RATIOS = (1, 2, 4, 8)  # libjpeg's DCT scalings 1/r that TF's decode_jpeg exposes
N_UNIFORMS = 2 * N_TRIES + 3
RATIO = (3 / 4, 4 / 3)
VAL_XTRA = 0.14


def val_resize_size(size: int, val_xtra: float = VAL_XTRA) -> int:
    """Side (px) fastai squishes a validation image to before the centre crop: 128 -> 152."""
    return size + math.ceil(size * val_xtra / 8) * 8


def crop_window(height, width, uniforms, min_scale: float, max_scale: float = 1.0,
                ratio: tuple[float, float] = RATIO):
    """fastai's train crop for images of `height` x `width` px.

    height, width: int tensors of shape [...]; uniforms: float64 [..., N_UNIFORMS] in [0, 1).
    Returns int32 (top, left, crop_height, crop_width), each of shape [...].
    """
    tf = import_tf()
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    u = tf.convert_to_tensor(uniforms, tf.float64)
    hh, ww = h[..., None], w[..., None]
    scale = min_scale + (max_scale - min_scale) * u[..., 0:2 * N_TRIES:2]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = tf.exp(log_lo + (log_hi - log_lo) * u[..., 1:2 * N_TRIES:2])
    area = scale * ww * hh
    nw = tf.round(tf.sqrt(area * r))
    nh = tf.round(tf.sqrt(area / r))
    fits = (nw <= ww) & (nh <= hh)
    first = tf.one_hot(tf.argmax(tf.cast(fits, tf.int32), axis=-1), N_TRIES, on_value=True,
                       off_value=False) & fits
    found = tf.reduce_any(fits, axis=-1)
    cw_try = tf.reduce_sum(tf.where(first, nw, 0.0), axis=-1)
    ch_try = tf.reduce_sum(tf.where(first, nh, 0.0), axis=-1)
    left_try = tf.minimum(tf.floor(u[..., 2 * N_TRIES] * (w - cw_try + 1)), w - cw_try)
    top_try = tf.minimum(tf.floor(u[..., 2 * N_TRIES + 1] * (h - ch_try + 1)), h - ch_try)

    aspect = w / h
    cw_fb = tf.where(aspect > ratio[1], tf.floor(h * ratio[1]), w)
    ch_fb = tf.where(aspect < ratio[0], tf.floor(w / ratio[0]), h)
    left_fb = tf.floor((w - cw_fb) / 2)
    top_fb = tf.floor((h - ch_fb) / 2)

    pick = lambda a, b: tf.cast(tf.where(found, a, b), tf.int32)  # noqa: E731
    return pick(top_try, top_fb), pick(left_try, left_fb), pick(ch_try, ch_fb), pick(cw_try, cw_fb)


def reduced_jpeg_plan(height, width, window, size: int):
    """How to decode a train crop at the coarsest JPEG scale that still has >= `size` px per side.

    height, width: int [...] (px); window: int [..., 4] (top, left, crop_height, crop_width) in
    original px; size: output side (px). r = JPEG_RATIOS[k] is the largest ratio with
    min(crop_height, crop_width) >= r·size (1 if none). Returns (k int32 [...], the window to
    decode at scale 1/r as int32 [..., 4] (top, left, height, width) of the ceil(height/r) x
    ceil(width/r) image, the crop's box in that decoded window's pixel coordinates as float32
    [..., 4] (left, top, right, bottom), Pillow's `box` order).
    """
    tf = import_tf()
    window = tf.convert_to_tensor(window, tf.int32)
    top, left, ch, cw = tf.unstack(window, axis=-1)
    h, w = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    steps = tf.constant(JPEG_RATIOS[1:], tf.int32) * size
    k = tf.reduce_sum(tf.cast(tf.minimum(ch, cw)[..., None] >= steps, tf.int32), axis=-1)
    r = tf.gather(tf.constant(JPEG_RATIOS, tf.int32), k)
    t0, l0 = top // r, left // r
    b0 = tf.minimum(-(-(top + ch) // r), -(-h // r))
    r0 = tf.minimum(-(-(left + cw) // r), -(-w // r))
    rf = tf.cast(r, tf.float64)
    f = lambda v: tf.cast(v, tf.float64)  # noqa: E731
    box = tf.stack([f(left) / rf - f(l0), f(top) / rf - f(t0),
                    f(left + cw) / rf - f(l0), f(top + ch) / rf - f(t0)], axis=-1)
    return k, tf.stack([t0, l0, b0 - t0, r0 - l0], axis=-1), tf.cast(box, tf.float32)


def _pil_resize_array(image: np.ndarray, out_h, out_w, box) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((int(out_w), int(out_h)), Image.BILINEAR,
                                                    box=tuple(float(v) for v in box)))


def pil_resize(image, out_h: int, out_w: int, box=None):
    """`PIL.Image.resize((out_w, out_h), BILINEAR, box)` of uint8 [h, w, 3] -> uint8 [out_h, out_w, 3].

    box: float [4] (left, top, right, bottom) source region in pixel-edge coordinates (may be
    fractional; Pillow's filter then reads pixels around it too); None = the whole image.
    Pillow itself, called from the graph (it releases the GIL while resampling, so tf.data's
    parallel map still uses every core).
    """
    tf = import_tf()
    if box is None:
        shape = tf.cast(tf.shape(image), tf.float32)
        box = tf.stack([0.0, 0.0, shape[1], shape[0]])
    out = tf.numpy_function(_pil_resize_array, [image, out_h, out_w, box], tf.uint8, stateful=False)
    return tf.ensure_shape(out, [out_h, out_w, 3])


def valid_transform(image, size: int, val_xtra: float = VAL_XTRA):
    """fastai's validation RandomResizedCrop: uint8 [h, w, 3] -> squish to S x S -> centre [size, size, 3]."""
    big = val_resize_size(size, val_xtra)
    off = (big - size) // 2
    return pil_resize(image, big, big)[off:off + size, off:off + size]
