"""Any CSV or DataFrame of (image name, labels[, is_valid]) plus an image folder -> LabelledImages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pml_jax.data.dataset import LabelledImages, split_labels, vocab_of
from pml_jax.errors import PmlError

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}


def read_csv(path: Path | str, needed: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as strings (no NaN for empty cells), raising PmlError naming the file and missing columns."""
    path = Path(path)
    if not path.is_file():
        raise PmlError(f"CSV file not found: {path}")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise PmlError(f"{path}: not a readable CSV ({e})") from None
    _require_columns(df, needed, str(path))
    return df


def _require_columns(df: pd.DataFrame, needed: tuple[str, ...], where: str) -> None:
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise PmlError(f"{where}: missing column(s) {missing}; have {list(df.columns)}")


def parse_is_valid(values, where: str = "table") -> np.ndarray:
    """bool [N] from bools, 0/1 numbers or 'True'/'False'/'0'/'1' strings (any case); anything else
    (NaN, '', 'yes', 2) raises PmlError naming the row and value."""
    out = np.zeros(len(values), bool)
    for row, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            out[row] = bool(v)
            continue
        if isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and v == v):
            key = str(int(v)) if float(v) in (0.0, 1.0) else repr(v)
        else:
            key = str(v).strip().lower()
        if key in _TRUE:
            out[row] = True
        elif key not in _FALSE:
            raise PmlError(f"{where}, row {row}: is_valid value {v!r} is not True/False/1/0")
    return out


def random_split(n: int, valid_pct: float = 0.2, seed: int = 42) -> np.ndarray:
    """bool [n] validation mask with int(valid_pct*n) items, like fastai's RandomSplitter.

    Seeded with numpy (`default_rng(seed).permutation(n)[:cut]`), so the split is reproducible
    but is NOT the same permutation as fastai's `torch.randperm`.
    """
    if not 0.0 <= valid_pct < 1.0:
        raise PmlError(f"valid_pct must be in [0, 1), got {valid_pct}")
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[: int(valid_pct * n)]] = True
    return mask


def from_csv(
    csv_or_df: Path | str | pd.DataFrame,
    image_root: Path | str,
    fname_col: str = "fname",
    label_col: str = "labels",
    valid_col: str | None = "is_valid",
    label_delim: str = " ",
    valid_pct: float = 0.2,
    seed: int = 42,
    name: str | None = None,
) -> LabelledImages:
    """Items from a table: `fname_col` (path relative to `image_root`), `label_col` (labels joined by
    `label_delim`, a number, or a list of labels in a DataFrame; empty = no label) and, if
    `valid_col` is a column, the split. Without that column a seeded random `valid_pct` split is
    made (see `random_split`). Labels are normalised to space-separated; vocab is the sorted union
    over both splits.
    """
    if isinstance(csv_or_df, pd.DataFrame):
        where = name or "DataFrame"
        df = csv_or_df
        _require_columns(df, (fname_col, label_col), where)
    else:
        where = str(csv_or_df)
        df = read_csv(csv_or_df, (fname_col, label_col))
    labels = [_normalise_labels(s, label_delim, f"{where}, row {i}") for i, s in enumerate(df[label_col])]
    fnames = ["" if f is None or (isinstance(f, float) and f != f) else str(f) for f in df[fname_col]]
    bad = [i for i, f in enumerate(fnames) if not f.strip()]
    if bad:
        raise PmlError(f"{where}, row {bad[0]}: empty {fname_col!r} value ({len(bad)} such rows)")
    if valid_col is not None and valid_col in df.columns:
        is_valid = parse_is_valid(list(df[valid_col]), where)
    else:
        is_valid = random_split(len(df), valid_pct, seed)
    out = pd.DataFrame({"fname": fnames, "labels": labels, "is_valid": is_valid})
    return LabelledImages(out, Path(image_root), vocab_of(labels), name=name or Path(where).stem)


def _label_token(value) -> str:
    """One label as text: 3 and 3.0 -> '3' (pandas turns an int column with gaps into floats)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value)


def _cell_labels(cell, delim: str) -> list[str]:
    """The labels of one table cell: a delimited string, a number (a class id), a list/tuple/array
    of labels, or empty (NaN, None, '')."""
    if isinstance(cell, str):
        return split_labels(cell, delim)
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [_label_token(v) for v in cell]
    return [] if cell is None or pd.isna(cell) else split_labels(_label_token(cell), delim)


def _normalise_labels(labels, delim: str, where: str) -> str:
    """'cat,dog' (delim ',') -> 'cat dog'; 7 -> '7'; ['cat', 'dog'] -> 'cat dog'; a label that itself
    contains whitespace raises PmlError."""
    if not delim:
        raise PmlError("label_delim must not be empty")
    tokens = [t.strip() for t in _cell_labels(labels, delim)]
    for t in tokens:
        if any(c.isspace() for c in t):
            raise PmlError(f"{where}: label {t!r} contains whitespace; labels must be single words")
    return " ".join(t for t in tokens if t)
