"""fastai's `dls.show_batch` as a PNG: a grid of augmented training images titled with their labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from pml_jax.data.dataset import LabelledImages
from pml_jax.data.loaders import DataLoaders
from pml_jax.errors import PmlError
from pml_jax.plots import label_text, plot_image_grid


def batch_titles(targets: np.ndarray, vocab: Sequence[str]) -> list[str]:
    """float [N, C] multi-hot -> N titles: the labels joined by ';' in vocab order ('(none)' for none)."""
    return [label_text(row > 0.5, vocab) for row in np.asarray(targets)]


def _first_train_batch(dls: DataLoaders, n: int) -> dict:
    """The first `n` items of epoch 0's training order, augmented exactly as `dls` trains on them."""
    n = min(n, len(dls.items.subset(False)))
    if n == 0:
        raise PmlError(f"{dls.items.name}: no training images to show")
    one = dataclasses.replace(dls, batch_size=n, process_index=0, process_count=1)
    return one.finish(next(iter(one.train(0))))  # crop buffers resized as the train step gets them


def show_batch(source, path, vocab: Sequence[str] | None = None, nrows: int = 3, ncols: int = 3, *,
               size: int = 128, seed: int = 0) -> Path:
    """Write a nrows x ncols grid of training images with their labels as titles to the PNG `path`.

    source: a DataLoaders (shown as it trains: size, seed, crops, flips, decoding), a LabelledImages
    (first epoch-0 train batch at `size`, `seed`) or a batch dict {'image': uint8 [B, H, W, 3],
    'target': float [B, C], optional 'mask': bool [B]} (then `vocab` is required). Returns `path`.
    """
    n = nrows * ncols
    if isinstance(source, dict):
        batch = source
    elif isinstance(source, LabelledImages):
        batch = _first_train_batch(DataLoaders(source, size=size, batch_size=n, seed=seed), n)
        vocab = source.vocab if vocab is None else vocab
    else:  # DataLoaders
        batch = _first_train_batch(source, n)
        vocab = source.items.vocab if vocab is None else vocab
    if vocab is None:
        raise PmlError("show_batch: a batch dict needs the vocab")
    keep = np.asarray(batch.get("mask", np.ones(len(batch["image"]), bool)), bool)
    images = np.asarray(batch["image"])[keep][:n]
    titles = batch_titles(np.asarray(batch["target"])[keep][:n], vocab)
    return plot_image_grid(images, titles, path, nrows, ncols)
