"""Encoded image bytes -> pixels, as TensorFlow graph ops: full decodes, exact windows, train
crops (exact or at a reduced JPEG scale) and fastai's validation image."""

from __future__ import annotations

import io

import numpy as np

from pml_jax.data import transforms as T
from pml_jax.data.tf_cpu import import_tf

JPEG_MARGIN = 16  # px decoded around a window: one 4:2:0 MCU


def _pil_decode(data: bytes) -> np.ndarray:
    """Formats TF cannot decode (TIFF, ...): PIL, converted to RGB as fastai's PILImage.create does."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def decode(data):
    """Encoded image bytes (scalar tf.string) -> uint8 [h, w, 3] RGB.

    JPEG (incl. grayscale and CMYK) with libjpeg's accurate integer DCT, as PIL; PNG, GIF (first
    frame), BMP and WebP natively (alpha dropped, palettes expanded, 16-bit -> high byte); any
    other format through PIL.
    """
    tf = import_tf()
    head = tf.strings.substr(data, 0, 12)
    padded = tf.strings.join([head, tf.constant(b"\0" * 12)])
    native = tf.reduce_any(tf.stack([
        tf.strings.substr(padded, 0, 4) == b"\x89PNG",
        tf.strings.substr(padded, 0, 4) == b"GIF8",
        tf.strings.substr(padded, 0, 2) == b"BM",
        (tf.strings.substr(padded, 0, 4) == b"RIFF") & (tf.strings.substr(padded, 8, 4) == b"WEBP"),
    ]))

    def other():
        img = tf.cond(
            native,
            lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
            lambda: tf.numpy_function(_pil_decode, [data], tf.uint8, stateful=False))
        return tf.ensure_shape(img, [None, None, 3])

    img = tf.cond(tf.io.is_jpeg(data),
                  lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                  other)
    return tf.ensure_shape(img, [None, None, 3])


def decode_window(data, hw, window):
    """The exact pixels of `window` (int [4]: top, left, height, width, original px) of encoded
    bytes of an image of `hw` (int [2]: height, width): uint8 [height, width, 3], equal to a full
    decode cropped. JPEGs decode only the window plus JPEG_MARGIN px; other formats decode whole."""
    tf = import_tf()
    top, left, ch, cw = tf.unstack(tf.cast(window, tf.int32))

    def jpeg():
        # libjpeg's cropped decode upsamples chroma differently at the window's edges: decode a
        # margin around it so the kept pixels equal a full decode (and PIL's) exactly.
        t0, l0 = tf.maximum(top - JPEG_MARGIN, 0), tf.maximum(left - JPEG_MARGIN, 0)
        b0 = tf.minimum(top + ch + JPEG_MARGIN, hw[0])
        r0 = tf.minimum(left + cw + JPEG_MARGIN, hw[1])
        part = tf.image.decode_and_crop_jpeg(data, tf.stack([t0, l0, b0 - t0, r0 - l0]), channels=3,
                                             dct_method="INTEGER_ACCURATE")
        return part[top - t0:top - t0 + ch, left - l0:left - l0 + cw]

    def other():
        img = decode(data)
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(img)[:2], tf.cast(hw, tf.int32), message="image size changed")]):
            return img[top:top + ch, left:left + cw]

    return tf.ensure_shape(tf.cond(tf.io.is_jpeg(data), jpeg, other), [None, None, 3])


def crop_resize(data, hw, window, size: int, flip=False, plan=None):
    """Crop `window` (int [4]: top, left, height, width, original px) of encoded bytes of an
    image of `hw` (int [2]: height, width) and resize it to uint8 [size, size, 3]; flip: bool
    (tensor) mirrors the result left-right.

    plan None (exact, fastai's bits): `decode_window`, then Pillow BILINEAR.
    plan = transforms.reduced_jpeg_plan(...) (fast_decode): JPEGs decode at 1/r scale only the
    plan's window and Pillow resamples the crop's fractional box there: same crop geometry, a
    DCT-downscaled pixel source (mean |difference| to the exact path ~1 level of 255 on
    photo-like images, see tests); other formats stay exact.
    """
    tf = import_tf()

    def exact():
        return T.pil_resize(decode_window(data, hw, window), size, size)

    def reduced_jpeg():
        k, part_window, box = plan
        part = tf.switch_case(k, [
            lambda r=r: tf.image.decode_and_crop_jpeg(data, part_window, channels=3, ratio=r,
                                                      dct_method="INTEGER_ACCURATE")
            for r in T.JPEG_RATIOS])
        return T.pil_resize(tf.ensure_shape(part, [None, None, 3]), size, size, box)

    img = exact() if plan is None else tf.cond(tf.io.is_jpeg(data), reduced_jpeg, exact)
    img = tf.cond(tf.convert_to_tensor(flip), lambda: img[:, ::-1], lambda: img)
    return tf.ensure_shape(img, [size, size, 3])


def valid_image(data, size: int):
    """fastai's validation transform of encoded bytes: squish to size+xtra, centre crop size.

    Returns uint8 [size, size, 3].
    """
    return import_tf().ensure_shape(T.valid_transform(decode(data), size), [size, size, 3])
