"""The one thing every data source returns: labelled image items, their root and the vocab."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from pml_jax.errors import PmlError

REQUIRED_COLUMNS = ("fname", "labels", "is_valid")


def split_labels(labels: str, delim: str = " ") -> list[str]:
    """'horse person' -> ['horse', 'person']; '' or NaN -> [] (an image with no label)."""
    if not isinstance(labels, str):
        return []
    return [t for t in labels.split(delim) if t]


def vocab_of(label_strings: Iterable[str]) -> tuple[str, ...]:
    """Sorted union of all labels, as fastai's MultiCategoryBlock builds its vocab."""
    return tuple(sorted({t for s in label_strings for t in split_labels(s)}))


def multi_hot(label_strings: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    """float32 [N, len(vocab)] targets; a label outside `vocab` raises PmlError naming it."""
    index = {v: i for i, v in enumerate(vocab)}
    out = np.zeros((len(label_strings), len(vocab)), np.float32)
    for row, s in enumerate(label_strings):
        for t in split_labels(s):
            if t not in index:
                raise PmlError(f"row {row}: label {t!r} is not in the vocab {list(vocab)}")
            out[row, index[t]] = 1.0
    return out


@dataclass(frozen=True)
class LabelledImages:
    """Items of a multi-label image set.

    df: one row per image with `fname` (relative to `root`), `labels` (space-separated,
    '' = no label) and boolean `is_valid`. vocab: sorted class names. `reader`, when set,
    replaces reading `root/fname` from disk: it maps a boolean `is_valid` to a tf.data
    Dataset of (encoded image bytes, float32 multi-hot) in df order (the tfds source).
    """

    df: pd.DataFrame
    root: Path | None
    vocab: tuple[str, ...]
    name: str = "images"
    reader: Callable[[bool], object] | None = field(default=None, compare=False)

    def __post_init__(self):
        missing = [c for c in REQUIRED_COLUMNS if c not in self.df.columns]
        if missing:
            raise PmlError(f"{self.name}: missing column(s) {missing}; have {list(self.df.columns)}")

    def subset(self, is_valid: bool) -> pd.DataFrame:
        """The train (False) or validation (True) rows, in their original order."""
        return self.df[self.df["is_valid"].astype(bool) == is_valid].reset_index(drop=True)

    def paths(self, is_valid: bool) -> list[str]:
        """Absolute image paths of a split (file-based sources only)."""
        if self.root is None:
            raise PmlError(f"{self.name}: items are not files on disk")
        return [str(Path(self.root) / f) for f in self.subset(is_valid)["fname"]]

    def targets(self, is_valid: bool) -> np.ndarray:
        """float32 [N, C] multi-hot targets of a split."""
        return multi_hot(list(self.subset(is_valid)["labels"]), self.vocab)
