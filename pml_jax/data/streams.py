"""tf.data assembly: map a per-item function over a split's rows in parallel and yield numpy
results; a failing item is found again and named in a PmlError."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from pml_jax.data.decode import decode
from pml_jax.data.splits import Split
from pml_jax.data.tf_cpu import import_tf
from pml_jax.errors import PmlError


def stream(split: Split, per_item: dict, item_fn: Callable, deterministic: bool,
           batch: int | None) -> Iterator:
    """Run item_fn over per_item's rows in tf.data and yield numpy results (batches of `batch`
    rows, or single rows for None); errors name the item.

    per_item: numpy arrays with a common first axis, 'pos' the split index (-1 = padding);
    item_fn(row, load) gets one row as tensors and `load(pos) -> (encoded bytes, target)`.
    """
    tf = import_tf()

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


def _locate_failure(split: Split, per_item: dict, start: int, element: Callable,
                    err: Exception) -> PmlError:
    """Re-run items eagerly from the failing batch on (then from the start) to name the bad one."""
    tf = import_tf()
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


def decoded_stream(split: Split, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(position, full decode uint8 [h, w, 3]) of each of `positions`, in order (the cache fill)."""
    if len(positions) == 0:
        return iter(())

    def item(row, load):
        return row["pos"], decode(load(row["pos"])[0])

    return ((int(p), image) for p, image in
            stream(split, {"pos": positions}, item, deterministic=True, batch=None))
