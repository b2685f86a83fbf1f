"""PASCAL VOC from tensorflow_datasets (`voc/2007`), read straight from its TFRecords (no re-encoding)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pml_jax.data.dataset import LabelledImages
from pml_jax.data.voc import VOC_CLASSES
from pml_jax.errors import PmlError

# pml_jax split -> {is_valid: tfds split}, in df order (train rows first)
_SPLITS = {
    "trainval": {False: "train", True: "validation"},
    "test": {True: "test"},
}


def tfds_voc(
    split: str = "trainval",
    data_dir: Path | str | None = None,
    download: bool = False,
    drop_difficult: bool = False,
    name: str = "voc/2007",
) -> LabelledImages:
    """Items of the tfds builder `name`: split='trainval' -> tfds train (train) + validation (is_valid);
    split='test' -> tfds test, every item is_valid.

    df fname = the tfds `image/filename`; labels = names of the `labels` feature (or
    `labels_no_difficult` with `drop_difficult`), via `features['labels'].feature.names`, which
    must be VOC_CLASSES (the vocab, as for the VOCdevkit source).
    `root` is None; `reader(is_valid)` gives a tf.data.Dataset of (encoded JPEG bytes tf.string,
    multi-hot float32[C]) in df order, decoding nothing. `data_dir` None = tfds's default folder;
    `download` runs tfds's download_and_prepare when the data is not prepared yet.
    """
    import tensorflow_datasets as tfds

    if split not in _SPLITS:
        raise PmlError(f"split must be one of {list(_SPLITS)}, got {split!r}")
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except tfds.core.registered.DatasetNotFoundError as e:
        raise PmlError(f"tfds dataset {name!r} is unknown ({str(e).splitlines()[0]})") from None
    if not builder.is_prepared():
        if not download:
            raise PmlError(
                f"tfds {name} is not prepared in {builder.data_dir}; pass download=True or the data_dir holding it"
            )
        builder.download_and_prepare()
    label_key = "labels_no_difficult" if drop_difficult else "labels"
    names = builder.info.features[label_key].feature.names
    if tuple(names) != VOC_CLASSES:
        raise PmlError(f"tfds {name}: class names {list(names)} are not the VOC classes {list(VOC_CLASSES)}")
    parts = []
    for is_valid, tfds_split in _SPLITS[split].items():
        rows = _rows(builder, tfds_split, label_key, names)
        parts.append(rows.assign(is_valid=is_valid))
    df = pd.concat(parts, ignore_index=True)
    vocab = VOC_CLASSES

    def reader(is_valid: bool):
        """tf.data.Dataset of (JPEG bytes, float32[C] multi-hot) of one split, in df order."""
        tfds_split = _SPLITS[split].get(bool(is_valid))
        ds = _read(builder, tfds_split or "test", label_key, len(vocab))
        return ds if tfds_split else ds.take(0)

    return LabelledImages(df, None, vocab, name=f"tfds:{name}:{split}", reader=reader)


def _dataset(builder, tfds_split: str):
    import tensorflow_datasets as tfds

    return builder.as_dataset(
        split=tfds_split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()}
    )


def _rows(builder, tfds_split: str, label_key: str, names) -> pd.DataFrame:
    """fname + space-joined label names of a tfds split, in reading order (images stay undecoded)."""
    ds = _dataset(builder, tfds_split).map(lambda ex: (ex["image/filename"], ex[label_key]))
    fnames, labels = [], []
    for fname, idx in ds.as_numpy_iterator():
        fnames.append(fname.decode())
        labels.append(" ".join(dict.fromkeys(names[i] for i in idx)))
    return pd.DataFrame({"fname": fnames, "labels": labels})


def _read(builder, tfds_split: str, label_key: str, depth: int):
    import tensorflow as tf

    def to_pair(ex):
        cols = tf.cast(ex[label_key], tf.int32)  # tfds class index == vocab column (names == VOC_CLASSES)
        target = tf.minimum(tf.reduce_sum(tf.one_hot(cols, depth, dtype=tf.float32), axis=0), 1.0)
        return ex["image"], tf.ensure_shape(target, [depth])

    return _dataset(builder, tfds_split).map(to_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
