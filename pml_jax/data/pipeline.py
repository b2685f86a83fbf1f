"""tf.data input pipeline: LabelledImages -> per-process batches of uint8 images, multi-hot targets, masks.

Every batch is a dict of numpy arrays {'image': uint8 [B, size, size, 3], 'target': float32 [B, C],
'mask': bool [B]}, with B = global batch size / process count. Images stay uint8 until the device
(pml_jax.data.normalize).

Train: the split is permuted with (seed, epoch), cut into global batches (the last partial one is
dropped) and each process takes its slice [p·B, (p+1)·B) of every global batch, so every process
yields the same number of batches and the global batches do not depend on the process count. An
item's crop (and flip) uses row `item index` of a uniforms table drawn from (seed, epoch): epoch k
is reproducible on its own. Crop windows are computed for the whole epoch at once from the image
sizes in the file headers; the tf.data map then only reads, decodes and resizes. Eval: items in
split order, padded to whole global batches with mask False.

TensorFlow is imported only when a pipeline is built, with accelerators hidden from it.
"""

from __future__ import annotations

import io
import math
import os
import weakref
from typing import Callable, Iterator, NamedTuple

import numpy as np

from pml_jax.data.dataset import LabelledImages
from pml_jax.errors import PmlError

_READER_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_JPEG_MARGIN = 16  # px decoded around a train crop window: one 4:2:0 MCU
_HW_CACHE: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}  # path -> ((mtime_ns, bytes), (h, w))
_SHOWN = 20  # unreadable images named in one error
# Train default: reduced-scale JPEG decoding (crop_resize): measured 1.3-2.3x the exact path's
# images/s in bench/pipeline.py, mean |difference| to fastai's pixels 0.7-2.4 levels of 255.
# fast_decode=False reproduces fastai bit for bit.
FAST_DECODE = True


def train_steps(items: LabelledImages, batch_size: int) -> int:
    """Batches per train epoch (global batch size; the last partial batch is dropped)."""
    return len(items.subset(False)) // batch_size


def eval_steps(items: LabelledImages, batch_size: int, is_valid: bool = True) -> int:
    """Batches to evaluate a split (global batch size; the last one is padded, every item kept)."""
    return math.ceil(len(items.subset(is_valid)) / batch_size)


# ----------------------------------------------------------------------------- per-image transforms


def _tf():
    from pml_jax.data.transforms import import_tf

    return import_tf()


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
    tf = _tf()
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


def image_hw(data):
    """Height and width (px) of encoded image bytes: int32 [2] (JPEG from its header, else decoded)."""
    tf = _tf()
    return tf.cond(tf.io.is_jpeg(data), lambda: tf.image.extract_jpeg_shape(data)[:2],
                   lambda: tf.shape(decode(data))[:2])


def train_image(data, size: int, uniforms, min_scale: float = 0.35, flip: bool = False,
                fast_decode: bool = FAST_DECODE):
    """fastai train RandomResizedCrop of encoded bytes -> uint8 [size, size, 3].

    uniforms: float64 [transforms.N_UNIFORMS] in [0, 1) (see transforms); flip (p=0.5,
    uniforms[22]) mirrors left-right after the resize; fast_decode: see `crop_resize`.
    """
    from pml_jax.data import transforms as T

    hw = image_hw(data)
    window = _tf().stack(T.crop_window(hw[0], hw[1], uniforms, min_scale))
    plan = T.reduced_jpeg_plan(hw[0], hw[1], window, size) if fast_decode else None
    return crop_resize(data, hw, window, size, flip and uniforms[T.N_UNIFORMS - 1] < 0.5, plan)


def crop_resize(data, hw, window, size: int, flip=False, plan=None):
    """Crop `window` (int [4]: top, left, height, width, original px) of encoded bytes of an
    image of `hw` (int [2]: height, width) and resize it to uint8 [size, size, 3]; flip: bool
    (tensor) mirrors the result left-right.

    plan None (exact, fastai's bits): JPEGs decode the window plus a 16 px margin, other formats
    decode whole; the crop goes through Pillow BILINEAR. plan = transforms.reduced_jpeg_plan(...)
    (fast_decode): JPEGs decode at 1/r scale only the plan's window and Pillow resamples the
    crop's fractional box there: same crop geometry, a DCT-downscaled pixel source (mean
    |difference| to the exact path ~1 level of 255 on photo-like images, see tests); other formats
    stay exact.
    """
    tf = _tf()
    from pml_jax.data import transforms as T

    top, left, ch, cw = tf.unstack(tf.cast(window, tf.int32))

    def exact_jpeg():
        # libjpeg's cropped decode upsamples chroma differently at the window's edges: decode a
        # margin around it so the kept pixels equal a full decode (and PIL's) exactly.
        t0, l0 = tf.maximum(top - _JPEG_MARGIN, 0), tf.maximum(left - _JPEG_MARGIN, 0)
        b0 = tf.minimum(top + ch + _JPEG_MARGIN, hw[0])
        r0 = tf.minimum(left + cw + _JPEG_MARGIN, hw[1])
        part = tf.image.decode_and_crop_jpeg(data, tf.stack([t0, l0, b0 - t0, r0 - l0]), channels=3,
                                             dct_method="INTEGER_ACCURATE")
        return T.pil_resize(part[top - t0:top - t0 + ch, left - l0:left - l0 + cw], size, size)

    def reduced_jpeg():
        k, part_window, box = plan
        part = tf.switch_case(k, [
            lambda r=r: tf.image.decode_and_crop_jpeg(data, part_window, channels=3, ratio=r,
                                                      dct_method="INTEGER_ACCURATE")
            for r in T.JPEG_RATIOS])
        return T.pil_resize(tf.ensure_shape(part, [None, None, 3]), size, size, box)

    def other():
        img = decode(data)
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(img)[:2], tf.cast(hw, tf.int32), message="image size changed")]):
            return T.pil_resize(img[top:top + ch, left:left + cw], size, size)

    img = tf.cond(tf.io.is_jpeg(data), exact_jpeg if plan is None else reduced_jpeg, other)
    img = tf.cond(tf.convert_to_tensor(flip), lambda: img[:, ::-1], lambda: img)
    return tf.ensure_shape(img, [size, size, 3])


def valid_image(data, size: int):
    """fastai's validation transform of encoded bytes: squish to size+xtra, centre crop size.

    Returns uint8 [size, size, 3].
    """
    from pml_jax.data.transforms import valid_transform

    return _tf().ensure_shape(valid_transform(decode(data), size), [size, size, 3])


# ----------------------------------------------------------------------------- sources and sharding


class _Split(NamedTuple):
    """One split's items: `data` is a tf.string [N] of file paths (from_files) or encoded images."""

    data: object
    from_files: bool
    targets: np.ndarray  # float32 [N, C]
    names: list[str]  # how errors name item i
    sources: list  # the N paths (str) or encoded images (bytes) behind `data`


def _reader_cache(items: LabelledImages) -> dict:
    """What is kept per reader (its splits' bytes and sizes); a fresh dict if it is not weakly referable."""
    try:
        return _READER_CACHE.setdefault(items.reader, {})
    except TypeError:
        return {}


def _read_reader(items: LabelledImages, is_valid: bool) -> tuple[list[bytes], np.ndarray]:
    """All (encoded bytes, multi-hot) of a reader-backed split, read once and kept per reader."""
    per_reader = _reader_cache(items)
    if is_valid not in per_reader:
        encoded, targets = [], []
        for data, target in items.reader(is_valid).as_numpy_iterator():
            encoded.append(bytes(data))
            targets.append(np.asarray(target, np.float32))
        n = len(items.subset(is_valid))
        if len(encoded) != n:
            raise PmlError(f"{items.name}: reader(is_valid={is_valid}) gave {len(encoded)} images, "
                           f"the table has {n} rows")
        per_reader[is_valid] = (encoded, np.stack(targets) if targets else
                                np.zeros((0, len(items.vocab)), np.float32))
    return per_reader[is_valid]


def _split(items: LabelledImages, is_valid: bool) -> _Split:
    tf = _tf()
    if items.reader is not None:
        encoded, targets = _read_reader(items, is_valid)
        fnames = list(items.subset(is_valid)["fname"])
        names = [f"{items.name} item {i} ({f})" for i, f in enumerate(fnames)]
        return _Split(tf.constant(encoded, tf.string), False, targets, names, encoded)
    paths = items.paths(is_valid)
    return _Split(tf.constant(paths, tf.string), True, items.targets(is_valid), paths, paths)


def _header_hw(source) -> tuple[int, int]:
    """(height, width) px from an image's header (a path or encoded bytes), without decoding it."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return im.height, im.width


def _file_hw(path: str) -> tuple[int, int]:
    """_header_hw of a file, cached while its modification time and size stay the same."""
    st = os.stat(path)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _HW_CACHE.get(path)
    if hit is None or hit[0] != stamp:
        hit = _HW_CACHE[path] = (stamp, _header_hw(path))
    return hit[1]


def _sizes(items: LabelledImages, split: _Split, is_valid: bool) -> np.ndarray:
    """int32 [N, 2] (height, width) px of every image of a split, from the headers.

    Images whose header cannot be read are collected and named in one PmlError.
    """
    per_reader = {} if split.from_files else _reader_cache(items)
    key = ("hw", is_valid)
    if key not in per_reader:
        hw, bad = np.zeros((len(split.sources), 2), np.int32), []
        for i, source in enumerate(split.sources):
            try:
                hw[i] = _file_hw(source) if split.from_files else _header_hw(source)
            except Exception as err:  # noqa: BLE001 - OSError, PIL's format and size errors
                bad.append(f"{split.names[i]}: {str(err) or type(err).__name__}")
        if bad:
            shown = "\n  ".join(bad[:_SHOWN])
            more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
            raise PmlError(f"{items.name}: cannot read {len(bad)} image(s):\n  {shown}{more}")
        per_reader[key] = hw
    return per_reader[key]


def _local_batch(batch_size: int, process_index: int | None, process_count: int | None):
    """(process index, process count, per-process batch size), checked."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if batch_size <= 0 or batch_size % process_count:
        raise PmlError(f"batch size {batch_size} must be a positive multiple of the process count "
                       f"{process_count}")
    if not 0 <= process_index < process_count:
        raise PmlError(f"process index {process_index} is not in [0, {process_count})")
    return process_index, process_count, batch_size // process_count


def _shard(order: np.ndarray, process_index: int, process_count: int, local: int) -> np.ndarray:
    """This process's slice of each global batch of `order` (length a multiple of the global batch)."""
    return order.reshape(-1, process_count, local)[:, process_index].reshape(-1)


def _seed_words(seed: int, epoch: int, stream: int) -> np.ndarray:
    """Two uint32 words drawn from (seed, epoch, stream); stream 0 orders items, 1 keys their crops."""
    if seed < 0 or epoch < 0:
        raise PmlError(f"seed {seed} and epoch {epoch} must be non-negative integers")
    return np.random.SeedSequence([seed, epoch, stream]).generate_state(2, np.uint32)


# ----------------------------------------------------------------------------- batches


def _batches(split: _Split, per_item: dict, item_fn: Callable, local: int,
             deterministic: bool) -> Iterator[dict]:
    """Run item_fn over per_item's rows in tf.data, yield numpy batches; errors name the item.

    per_item: numpy arrays with a common first axis, 'pos' the split index (-1 = padding);
    item_fn(row, load) gets one row as tensors and `load(pos) -> (encoded bytes, target)`.
    """
    tf = _tf()

    def load(pos):
        data = tf.gather(split.data, pos)
        if split.from_files:
            data = tf.io.read_file(data)
        return data, tf.gather(split.targets, pos)

    def element(row):
        return item_fn(row, load)

    options = tf.data.Options()
    options.deterministic = deterministic
    # tf.data's autotuner, next to a CPU train step that takes both cores, now and then held the
    # epoch's last batch back 10-18 s (2-4 of 10 demo epochs 42 s instead of 25 s). Without it the
    # AUTOTUNE knobs keep TF's fixed defaults and no epoch stalled (same batches, same metrics).
    options.autotune.enabled = False
    ds = (tf.data.Dataset.from_tensor_slices(per_item)
          .map(element, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(local, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE)
          .with_options(options))
    done = 0
    try:
        for batch in ds.as_numpy_iterator():
            yield batch
            done += 1
    except tf.errors.OpError as err:
        raise _locate_failure(split, per_item, done * local, element, err) from None


def _locate_failure(split: _Split, per_item: dict, start: int, element: Callable,
                    err: Exception) -> PmlError:
    """Re-run items eagerly from the failing batch on (then from the start) to name the bad one."""
    tf = _tf()
    n = len(per_item["pos"])
    for i in np.concatenate([np.arange(start, n), np.arange(min(start, n))]):
        pos = per_item["pos"][i]
        if pos < 0:
            continue
        try:
            element({k: tf.constant(v[i]) for k, v in per_item.items()})
        except Exception as item_err:  # noqa: BLE001 - TF errors, and PIL's when decoding eagerly
            reason = (getattr(item_err, "message", None) or str(item_err) or type(item_err).__name__)
            return PmlError(f"{split.names[pos]}: cannot read image: {reason.strip().splitlines()[0]}")
    return PmlError(f"input pipeline failed: {err}")


def train_batches(items: LabelledImages, size: int, batch_size: int, seed: int, epoch: int, *,
                  start_step: int = 0, min_scale: float = 0.35, flip: bool = False,
                  fast_decode: bool = FAST_DECODE, process_index: int | None = None,
                  process_count: int | None = None, deterministic: bool = True) -> Iterator[dict]:
    """One epoch of augmented train batches for this process (see module docstring).

    size: output side (px); batch_size: GLOBAL batch size, a multiple of the process count;
    yields batches start_step .. train_steps(items, batch_size)-1 of the epoch (start_step > 0
    resumes mid-epoch with the same batches), dicts image uint8 [B, size, size, 3], target
    float32 [B, C], mask bool [B] (all True), B = batch_size / process count.
    fast_decode: JPEGs decode at reduced DCT scale (same crops, not fastai's exact pixels; see
    `crop_resize`); False gives fastai's bits. deterministic=False lets tf.data reorder items
    within the epoch for speed (batches then vary run to run). Image sizes come from the file
    headers (read once, cached): one unreadable header raises PmlError before any batch.
    """
    tf = _tf()
    from pml_jax.data import transforms as T

    p, n_proc, local = _local_batch(batch_size, process_index, process_count)
    if start_step < 0:
        raise PmlError(f"start_step {start_step} must be >= 0")
    split = _split(items, False)
    n = len(split.targets)
    if n < batch_size:
        raise PmlError(f"{items.name}: the train split has {n} images, fewer than one batch "
                       f"({batch_size})")
    hw = _sizes(items, split, False)
    order = np.random.default_rng(_seed_words(seed, epoch, 0)).permutation(n)
    uniforms = np.random.default_rng(_seed_words(seed, epoch, 1)).random((n, T.N_UNIFORMS))
    pos = _shard(order[: (n // batch_size) * batch_size], p, n_proc, local)[start_step * local:]
    hw, uniforms = hw[pos], uniforms[pos]
    window = tf.stack(T.crop_window(hw[:, 0], hw[:, 1], uniforms, min_scale), -1).numpy()
    per_item = {"pos": pos, "hw": hw, "window": window, "flip": flip & (uniforms[:, -1] < 0.5)}
    if fast_decode:
        plan = T.reduced_jpeg_plan(hw[:, 0], hw[:, 1], window, size)
        per_item.update(zip(("ratio", "part", "box"), (t.numpy() for t in plan)))

    def item(row, load):
        data, target = load(row["pos"])
        plan = (row["ratio"], row["part"], row["box"]) if fast_decode else None
        image = crop_resize(data, row["hw"], row["window"], size, row["flip"], plan)
        return {"image": image, "target": target, "mask": tf.constant(True)}

    return _batches(split, per_item, item, local, deterministic)


def eval_batches(items: LabelledImages, size: int, batch_size: int, is_valid: bool = True, *,
                 process_index: int | None = None, process_count: int | None = None) -> Iterator[dict]:
    """Every item of a split once, in split order, with fastai's validation transform.

    batch_size: GLOBAL batch size; yields eval_steps(items, batch_size, is_valid) dicts image
    uint8 [B, size, size, 3], target float32 [B, C], mask bool [B]; padding rows (after the last
    item of the last global batch) are zeros with mask False.
    """
    tf = _tf()
    p, n_proc, local = _local_batch(batch_size, process_index, process_count)
    split = _split(items, is_valid)
    n = len(split.targets)
    order = np.arange(math.ceil(n / batch_size) * batch_size)
    order[order >= n] = -1
    n_classes = split.targets.shape[1]

    def item(row, load):
        pos = row["pos"]

        def real():
            data, target = load(pos)
            return valid_image(data, size), target

        def pad():
            return tf.zeros([size, size, 3], tf.uint8), tf.zeros([n_classes], tf.float32)

        image, target = tf.cond(pos >= 0, real, pad)
        return {"image": image, "target": target, "mask": pos >= 0}

    per_item = {"pos": _shard(order, p, n_proc, local)}
    return _batches(split, per_item, item, local, deterministic=True)
