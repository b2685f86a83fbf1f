"""fastai's `dls.show_batch` as a PNG: a grid of augmented training images titled with their labels."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pml_jax.data.dataset import LabelledImages
from pml_jax.errors import PmlError


def batch_titles(targets: np.ndarray, vocab: Sequence[str]) -> list[str]:
    """float [N, C] multi-hot -> N titles: the labels joined by ';' in vocab order ('' for none)."""
    return [";".join(vocab[j] for j in np.flatnonzero(row > 0.5)) for row in np.asarray(targets)]


def _first_train_batch(items: LabelledImages, n: int, size: int, seed: int, min_scale: float,
                       flip: bool) -> dict:
    from pml_jax.data.pipeline import train_batches

    n = min(n, len(items.subset(False)))
    if n == 0:
        raise PmlError(f"{items.name}: no training images to show")
    return next(iter(train_batches(items, size, n, seed, 0, min_scale=min_scale, flip=flip,
                                   process_index=0, process_count=1)))


def show_batch(source, path, vocab: Sequence[str] | None = None, nrows: int = 3, ncols: int = 3, *,
               size: int = 128, seed: int = 0) -> Path:
    """Write a nrows x ncols grid of training images with their labels as titles to the PNG `path`.

    source: a DataLoaders (its items, size, seed, min_scale, flip are used), a LabelledImages
    (first epoch-0 train batch at `size`, `seed`) or a batch dict {'image': uint8 [B, H, W, 3],
    'target': float [B, C], optional 'mask': bool [B]} (then `vocab` is required). Returns `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = nrows * ncols
    if isinstance(source, dict):
        batch = source
    elif isinstance(source, LabelledImages):
        batch = _first_train_batch(source, n, size, seed, 0.35, False)
        vocab = source.vocab if vocab is None else vocab
    else:  # DataLoaders
        batch = _first_train_batch(source.items, n, source.size, source.seed, source.min_scale,
                                   source.flip)
        vocab = source.items.vocab if vocab is None else vocab
    if vocab is None:
        raise PmlError("show_batch: a batch dict needs the vocab")
    keep = np.asarray(batch.get("mask", np.ones(len(batch["image"]), bool)), bool)
    images = np.asarray(batch["image"])[keep][:n]
    titles = batch_titles(np.asarray(batch["target"])[keep][:n], vocab)

    fig = Figure(figsize=(3 * ncols, 3 * nrows))
    FigureCanvasAgg(fig)
    for i, ax in enumerate(fig.subplots(nrows, ncols, squeeze=False).ravel()):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i])
            ax.set_title(titles[i], fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72)
    return path
