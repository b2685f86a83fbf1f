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
host threads (pml_jax.data.cached_batches); validation batches are recorded once and replayed.
The cache never changes a batch: a cached image is the full decode the per-epoch path crops from
(fast_decode, which decodes JPEGs at reduced scale, only applies to the per-epoch host path).

The parts: decode (TF decode ops), header_sizes, batch_plan (steps, process slices, seeds),
splits (a split's paths or a reader's bytes), streams (tf.data and naming a failing image),
cached_batches. TensorFlow is imported only when a pipeline is built (pml_jax.data.tf_cpu).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pml_jax.choices import AUGMENT_MODES, FAST_DECODE, MIN_SCALE
from pml_jax.data import host_crops
from pml_jax.data import transforms as T
from pml_jax.data.batch_plan import eval_steps, local_batch, seed_words, shard
from pml_jax.data.cache import ImageCache
from pml_jax.data.cached_batches import cached_batches, device_maker, host_maker
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.decode import crop_resize, decode_window, valid_image
from pml_jax.data.header_sizes import split_sizes
from pml_jax.data.splits import Split, read_split
from pml_jax.data.streams import stream
from pml_jax.data.tf_cpu import import_tf
from pml_jax.errors import PmlError

AUGMENTS = AUGMENT_MODES[1:]  # device | host: where train crops are resized (DataLoaders resolves auto)


def _sizes(items: LabelledImages, split: Split, is_valid: bool, store: ImageCache,
           keep: bool) -> np.ndarray:
    """int32 [N, 2] (height, width) px of a split's images, from their headers (one PmlError
    names every unreadable one). keep: read once into `store` (as a reader's bytes always are);
    else files are read again when they change."""
    def read():
        files = store.headers if split.from_files else None
        return split_sizes(items.name, split.sources, split.names, files)

    return store.sizes(is_valid, read) if keep or not split.from_files else read()


def image_sizes(items: LabelledImages, is_valid: bool, store: ImageCache) -> np.ndarray:
    """int32 [N, 2] (height, width) px of a split's images, from their headers, kept in `store`."""
    return _sizes(items, read_split(items, is_valid, store), is_valid, store, keep=True)


def train_batches(items: LabelledImages, size: int, batch_size: int, seed: int, epoch: int, *,
                  start_step: int = 0, min_scale: float = MIN_SCALE, flip: bool = False,
                  fast_decode: bool = FAST_DECODE, augment: str = "host", cache: bool = False,
                  store: ImageCache | None = None, process_index: int | None = None,
                  process_count: int | None = None, deterministic: bool = True) -> Iterator[dict]:
    """One epoch of augmented train batches for this process (see module docstring).

    size: output side (px); batch_size: GLOBAL batch size, a multiple of the process count;
    yields batches start_step .. train_steps(items, batch_size)-1 of the epoch (start_step > 0
    resumes mid-epoch with the same batches), dicts image uint8 [B, size, size, 3], target
    float32 [B, C], mask bool [B] (all True), B = batch_size / process count; augment="device":
    crop buffers instead (module docstring). store: what is kept across epochs (the loaders'
    ImageCache; None: nothing past this call); cache: decode each image once into `store` and cut
    later epochs' crops from RAM (same batches). fast_decode (host path without a cache): JPEGs
    decode at reduced DCT scale (same crops, not fastai's exact pixels; see decode.crop_resize);
    False gives fastai's bits. deterministic=False lets tf.data reorder items within the epoch
    for speed (batches then vary run to run; not with a cache). Image sizes come from the file
    headers (read again only when a file changes): one unreadable header raises PmlError before
    any batch.
    """
    tf = import_tf()
    if augment not in AUGMENTS:
        raise PmlError(f"augment={augment!r} is not one of {list(AUGMENTS)}")
    p, n_proc, local = local_batch(batch_size, process_index, process_count)
    if start_step < 0:
        raise PmlError(f"start_step {start_step} must be >= 0")
    store = ImageCache(items) if store is None else store
    split = read_split(items, False, store)
    n = len(split.targets)
    if n < batch_size:
        raise PmlError(f"{items.name}: the train split has {n} images, fewer than one batch "
                       f"({batch_size})")
    sizes = _sizes(items, split, False, store, keep=cache)
    order = np.random.default_rng(seed_words(seed, epoch, 0)).permutation(n)
    uniforms = np.random.default_rng(seed_words(seed, epoch, 1)).random((n, T.N_UNIFORMS))
    pos = shard(order[: (n // batch_size) * batch_size], p, n_proc, local)[start_step * local:]
    hw, uniforms = sizes[pos], uniforms[pos]
    window = tf.stack(T.crop_window(hw[:, 0], hw[:, 1], uniforms, min_scale), -1).numpy()
    per_item = {"pos": pos, "window": window, "flip": flip & (uniforms[:, -1] < 0.5)}
    if augment == "device":
        buffer = host_crops.buffer_hw(size, sizes.max(axis=0))
        per_item.update(zip(("k", "hw", "box_hw"), host_crops.shrink_plan(window, buffer)))
        if cache:
            return cached_batches(split, per_item, store.decoded(False, n), local,
                                  device_maker(per_item, buffer))
        return stream(split, {**per_item, "image_hw": hw}, _device_item(buffer), deterministic, local)
    if cache:
        return cached_batches(split, per_item, store.decoded(False, n), local, host_maker(per_item, size))
    per_item["image_hw"] = hw
    if fast_decode:
        plan = T.reduced_jpeg_plan(hw[:, 0], hw[:, 1], window, size)
        per_item.update(zip(("ratio", "part", "box"), (t.numpy() for t in plan)))

    def item(row, load):
        data, target = load(row["pos"])
        plan = (row["ratio"], row["part"], row["box"]) if fast_decode else None
        image = crop_resize(data, row["image_hw"], row["window"], size, row["flip"], plan)
        return {"image": image, "target": target, "mask": tf.constant(True)}

    return stream(split, per_item, item, deterministic, local)


def _device_item(buffer: tuple[int, int]) -> Callable:
    """tf.data item of the per-epoch device path: the window's exact pixels in a crop buffer."""
    tf = import_tf()

    def item(row, load):
        data, target = load(row["pos"])
        pixels = decode_window(data, row["image_hw"], row["window"])
        image = tf.numpy_function(host_crops.padded_window, [pixels, row["k"], *buffer], tf.uint8,
                                  stateful=False)
        return {"image": tf.ensure_shape(image, [*buffer, 3]), "target": target,
                "mask": tf.constant(True), **{key: row[key] for key in host_crops.CROP_KEYS}}

    return item


def eval_batches(items: LabelledImages, size: int, batch_size: int, *, cache: bool = False,
                 store: ImageCache | None = None, process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict]:
    """Every item of the validation split once, in split order, with fastai's validation transform.

    batch_size: GLOBAL batch size; yields eval_steps(items, batch_size) dicts image
    uint8 [B, size, size, 3], target float32 [B, C], mask bool [B]; padding rows (after the last
    item of the last global batch) are zeros with mask False. store: as in `train_batches`;
    cache: the batches are kept in `store` after one whole pass and replayed from then on.
    """
    tf = import_tf()
    p, n_proc, local = local_batch(batch_size, process_index, process_count)
    store = ImageCache(items) if store is None else store
    key = (size, batch_size, p, n_proc)
    if cache and key in store.eval_batches:
        return iter(store.eval_batches[key])
    split = read_split(items, True, store)
    n = len(split.targets)
    order = np.arange(eval_steps(items, batch_size) * batch_size)
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

    batches = stream(split, {"pos": shard(order, p, n_proc, local)}, item, True, local)
    return _recorded(batches, store.eval_batches, key) if cache else batches


def _recorded(batches: Iterator[dict], kept_in: dict, key) -> Iterator[dict]:
    """Yield `batches`; once all have been yielded, keep them as kept_in[key]."""
    kept = []
    for batch in batches:
        kept.append(batch)
        yield batch
    kept_in[key] = kept
