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

augment="device": train batches carry each crop window before its resize, in a fixed buffer
(pml_jax.data.host_crops): {'image': uint8 [B, rows, cols, 3], 'hw': int32 [B, 2] the pixels
filled, 'box_hw': float32 [B, 2] the crop's extent in them, 'flip': bool [B], 'target', 'mask'};
pml_jax.data.device_crops resizes them on the device. With a cache (pml_jax.data.cache) the train
images are decoded once, in the order first needed, and later epochs cut their crops from RAM in
host threads; validation batches are recorded once and replayed. The cache never changes a
batch: a cached image is the full decode the per-epoch path crops from (fast_decode, which
decodes JPEGs at reduced scale, only applies to the per-epoch host path).

TensorFlow is imported only when a pipeline is built, with accelerators hidden from it.
"""

from __future__ import annotations

import io
import math
import os
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, NamedTuple

import numpy as np

from pml_jax.choices import AUGMENT_MODES
from pml_jax.data import host_crops
from pml_jax.data.cache import DecodedImages, ImageCache
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
AUGMENTS = AUGMENT_MODES[1:]  # device | host: where train crops are resized (DataLoaders resolves auto)
_CACHE_WORKERS = 2  # host threads cutting crops from the cache (Pillow and numpy copies drop the GIL)
_CACHE_PREFETCH = 4  # batches made ahead from the cache


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


def decode_window(data, hw, window):
    """The exact pixels of `window` (int [4]: top, left, height, width, original px) of encoded
    bytes of an image of `hw` (int [2]: height, width): uint8 [height, width, 3], equal to a full
    decode cropped. JPEGs decode only the window plus a 16 px margin; other formats decode whole."""
    tf = _tf()
    top, left, ch, cw = tf.unstack(tf.cast(window, tf.int32))

    def jpeg():
        # libjpeg's cropped decode upsamples chroma differently at the window's edges: decode a
        # margin around it so the kept pixels equal a full decode (and PIL's) exactly.
        t0, l0 = tf.maximum(top - _JPEG_MARGIN, 0), tf.maximum(left - _JPEG_MARGIN, 0)
        b0 = tf.minimum(top + ch + _JPEG_MARGIN, hw[0])
        r0 = tf.minimum(left + cw + _JPEG_MARGIN, hw[1])
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
    tf = _tf()
    from pml_jax.data import transforms as T

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


def _stream(split: _Split, per_item: dict, item_fn: Callable, deterministic: bool,
            batch: int | None) -> Iterator:
    """Run item_fn over per_item's rows in tf.data and yield numpy results (batches of `batch`
    rows, or single rows for None); errors name the item.

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
    ds = tf.data.Dataset.from_tensor_slices(per_item).map(element, num_parallel_calls=tf.data.AUTOTUNE)
    if batch is not None:
        ds = ds.batch(batch, drop_remainder=True)
    done = 0
    try:
        for out in ds.prefetch(tf.data.AUTOTUNE).with_options(options).as_numpy_iterator():
            yield out
            done += 1
    except tf.errors.OpError as err:
        raise _locate_failure(split, per_item, done * (batch or 1), element, err) from None


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


def _decoded_stream(split: _Split, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(position, full decode uint8 [h, w, 3]) of each of `positions`, in order (the cache fill)."""
    if len(positions) == 0:
        return iter(())

    def item(row, load):
        return row["pos"], decode(load(row["pos"])[0])

    return ((int(p), image) for p, image in
            _stream(split, {"pos": positions}, item, deterministic=True, batch=None))


# ----------------------------------------------------------------------------- batches from the cache


def _host_crop(image: np.ndarray, window, size: int, flip: bool) -> np.ndarray:
    """fastai's crop of a decoded image: window (top, left, height, width) resized with Pillow
    BILINEAR to uint8 [size, size, 3] (the bits `crop_resize` gives), then the optional flip."""
    from PIL import Image

    top, left, ch, cw = (int(v) for v in window)
    out = np.asarray(Image.fromarray(np.ascontiguousarray(image[top:top + ch, left:left + cw]))
                     .resize((size, size), Image.BILINEAR))
    return out[:, ::-1] if flip else out


def _cached_batches(split: _Split, per_item: dict, store: DecodedImages, local: int,
                    make: Callable[[list[np.ndarray], slice], dict]) -> Iterator[dict]:
    """Batches of `local` rows of per_item cut from `store`: images the store lacks are decoded
    first (one background fill, in the order they are needed); make(images, rows) builds one
    batch in a host thread, _CACHE_PREFETCH batches ahead."""
    positions = per_item["pos"]
    n_batches = len(positions) // local
    stop = store.fill(lambda: _decoded_stream(split, store.missing(positions)))

    def batch(b: int) -> dict:
        rows = slice(b * local, (b + 1) * local)
        out = make([store.get(p) for p in positions[rows]], rows)
        out["target"] = split.targets[positions[rows]]
        out["mask"] = np.ones(local, bool)
        return out

    pool = ThreadPoolExecutor(_CACHE_WORKERS, thread_name_prefix="pml_jax crops")
    try:
        ahead = deque(pool.submit(batch, b) for b in range(min(_CACHE_PREFETCH, n_batches)))
        following = len(ahead)
        while ahead:
            done = ahead.popleft().result()
            if following < n_batches:
                ahead.append(pool.submit(batch, following))
                following += 1
            yield done
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def _host_maker(per_item: dict, size: int) -> Callable:
    def make(images, rows):
        out = np.empty((len(images), size, size, 3), np.uint8)
        for i, (image, window, flip) in enumerate(zip(images, per_item["window"][rows],
                                                      per_item["flip"][rows])):
            out[i] = _host_crop(image, window, size, flip)
        return {"image": out}

    return make


def _device_maker(per_item: dict, buffer: tuple[int, int]) -> Callable:
    def make(images, rows):
        out = np.zeros((len(images), *buffer, 3), np.uint8)
        for i, (image, (top, left, ch, cw), k) in enumerate(zip(images, per_item["window"][rows],
                                                                per_item["k"][rows])):
            host_crops.put_window(out[i], image[top:top + ch, left:left + cw], k)
        return {"image": out, **{key: per_item[key][rows] for key in _DEVICE_KEYS}}

    return make


# ----------------------------------------------------------------------------- epochs

_DEVICE_KEYS = ("hw", "box_hw", "flip")  # a device-crop batch's extras (pml_jax.data.device_crops.CROP_KEYS)


def image_sizes(items: LabelledImages, is_valid: bool) -> np.ndarray:
    """int32 [N, 2] (height, width) px of a split's images, from their headers (read once)."""
    return _sizes(items, _split(items, is_valid), is_valid)


def train_batches(items: LabelledImages, size: int, batch_size: int, seed: int, epoch: int, *,
                  start_step: int = 0, min_scale: float = 0.35, flip: bool = False,
                  fast_decode: bool = FAST_DECODE, augment: str = "host", cache: ImageCache | None = None,
                  process_index: int | None = None, process_count: int | None = None,
                  deterministic: bool = True) -> Iterator[dict]:
    """One epoch of augmented train batches for this process (see module docstring).

    size: output side (px); batch_size: GLOBAL batch size, a multiple of the process count;
    yields batches start_step .. train_steps(items, batch_size)-1 of the epoch (start_step > 0
    resumes mid-epoch with the same batches), dicts image uint8 [B, size, size, 3], target
    float32 [B, C], mask bool [B] (all True), B = batch_size / process count; augment="device":
    crop buffers instead (module docstring). cache: decode each image once into it and cut
    later epochs' crops from RAM (same batches). fast_decode (host path without a cache): JPEGs
    decode at reduced DCT scale (same crops, not fastai's exact pixels; see `crop_resize`); False
    gives fastai's bits. deterministic=False lets tf.data reorder items within the epoch for speed
    (batches then vary run to run; not with a cache). Image sizes come from the file headers (read
    once, cached): one unreadable header raises PmlError before any batch.
    """
    tf = _tf()
    from pml_jax.data import transforms as T

    if augment not in AUGMENTS:
        raise PmlError(f"augment={augment!r} is not one of {list(AUGMENTS)}")
    p, n_proc, local = _local_batch(batch_size, process_index, process_count)
    if start_step < 0:
        raise PmlError(f"start_step {start_step} must be >= 0")
    split = _split(items, False)
    n = len(split.targets)
    if n < batch_size:
        raise PmlError(f"{items.name}: the train split has {n} images, fewer than one batch "
                       f"({batch_size})")
    sizes = (_sizes(items, split, False) if cache is None
             else cache.sizes(False, lambda: _sizes(items, split, False)))
    order = np.random.default_rng(_seed_words(seed, epoch, 0)).permutation(n)
    uniforms = np.random.default_rng(_seed_words(seed, epoch, 1)).random((n, T.N_UNIFORMS))
    pos = _shard(order[: (n // batch_size) * batch_size], p, n_proc, local)[start_step * local:]
    hw, uniforms = sizes[pos], uniforms[pos]
    window = tf.stack(T.crop_window(hw[:, 0], hw[:, 1], uniforms, min_scale), -1).numpy()
    per_item = {"pos": pos, "window": window, "flip": flip & (uniforms[:, -1] < 0.5)}
    if augment == "device":
        buffer = host_crops.buffer_hw(size, sizes.max(axis=0))
        per_item.update(zip(("k", "hw", "box_hw"), host_crops.shrink_plan(window, buffer)))
        if cache is not None:
            return _cached_batches(split, per_item, cache.decoded(False, n), local,
                                   _device_maker(per_item, buffer))
        return _stream(split, {**per_item, "image_hw": hw}, _device_item(buffer), deterministic, local)
    if cache is not None:
        return _cached_batches(split, per_item, cache.decoded(False, n), local, _host_maker(per_item, size))
    per_item["image_hw"] = hw
    if fast_decode:
        plan = T.reduced_jpeg_plan(hw[:, 0], hw[:, 1], window, size)
        per_item.update(zip(("ratio", "part", "box"), (t.numpy() for t in plan)))

    def item(row, load):
        data, target = load(row["pos"])
        plan = (row["ratio"], row["part"], row["box"]) if fast_decode else None
        image = crop_resize(data, row["image_hw"], row["window"], size, row["flip"], plan)
        return {"image": image, "target": target, "mask": tf.constant(True)}

    return _stream(split, per_item, item, deterministic, local)


def _device_item(buffer: tuple[int, int]) -> Callable:
    """tf.data item of the per-epoch device path: the window's exact pixels in a crop buffer."""
    tf = _tf()

    def item(row, load):
        data, target = load(row["pos"])
        pixels = decode_window(data, row["image_hw"], row["window"])
        image = tf.numpy_function(host_crops.padded_window, [pixels, row["k"], *buffer], tf.uint8,
                                  stateful=False)
        return {"image": tf.ensure_shape(image, [*buffer, 3]), "target": target,
                "mask": tf.constant(True), **{key: row[key] for key in _DEVICE_KEYS}}

    return item


def eval_batches(items: LabelledImages, size: int, batch_size: int, is_valid: bool = True, *,
                 cache: ImageCache | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
    """Every item of a split once, in split order, with fastai's validation transform.

    batch_size: GLOBAL batch size; yields eval_steps(items, batch_size, is_valid) dicts image
    uint8 [B, size, size, 3], target float32 [B, C], mask bool [B]; padding rows (after the last
    item of the last global batch) are zeros with mask False. cache: the validation split's
    batches are kept there after one whole pass and replayed from then on.
    """
    tf = _tf()
    p, n_proc, local = _local_batch(batch_size, process_index, process_count)
    key = (size, batch_size, p, n_proc)
    if cache is not None and is_valid and key in cache.eval_batches:
        return iter(cache.eval_batches[key])
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
    batches = _stream(split, per_item, item, True, local)
    return _recorded(batches, cache.eval_batches, key) if cache is not None and is_valid else batches


def _recorded(batches: Iterator[dict], store: dict, key) -> Iterator[dict]:
    """Yield `batches`; once all have been yielded, keep them as store[key]."""
    kept = []
    for batch in batches:
        kept.append(batch)
        yield batch
    store[key] = kept
