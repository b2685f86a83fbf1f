"""One split of a LabelledImages as the tf.data pipeline reads it: file paths, or the encoded
images a reader gives (read once per ImageCache), with targets and the names errors use."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from pml_jax.data.cache import ImageCache
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.tf_cpu import import_tf
from pml_jax.errors import PmlError


class Split(NamedTuple):
    """One split's items: `data` is a tf.string [N] of file paths (from_files) or encoded images."""

    data: object
    from_files: bool
    targets: np.ndarray  # float32 [N, C]
    names: list[str]  # how errors name item i
    sources: list  # the N paths (str) or encoded images (bytes) behind `data`


def _read_reader(items: LabelledImages, is_valid: bool) -> tuple[list[bytes], np.ndarray]:
    """All (encoded bytes, multi-hot) of a reader-backed split, checked against the table."""
    encoded, targets = [], []
    for data, target in items.reader(is_valid).as_numpy_iterator():
        encoded.append(bytes(data))
        targets.append(np.asarray(target, np.float32))
    n = len(items.subset(is_valid))
    if len(encoded) != n:
        raise PmlError(f"{items.name}: reader(is_valid={is_valid}) gave {len(encoded)} images, "
                       f"the table has {n} rows")
    return encoded, np.stack(targets) if targets else np.zeros((0, len(items.vocab)), np.float32)


def read_split(items: LabelledImages, is_valid: bool, store: ImageCache) -> Split:
    """The train (False) or validation (True) split; a reader's bytes are kept in `store`."""
    tf = import_tf()
    if items.reader is not None:
        encoded, targets = store.encoded(is_valid, lambda: _read_reader(items, is_valid))
        fnames = list(items.subset(is_valid)["fname"])
        names = [f"{items.name} item {i} ({f})" for i, f in enumerate(fnames)]
        return Split(tf.constant(encoded, tf.string), False, targets, names, encoded)
    paths = items.paths(is_valid)
    return Split(tf.constant(paths, tf.string), True, items.targets(is_valid), paths, paths)
