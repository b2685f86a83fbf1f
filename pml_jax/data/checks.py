"""Bad-input checks before training: the item table, then every image file (exists, decodes, not huge).

Decisions: a fname repeated inside one split is a warning (kept; fastai would train on it twice);
a fname in both train and valid is an error (leakage). Images above `max_pixels` (default PIL's
`Image.MAX_IMAGE_PIXELS`, ~89.5 Mpx) are reported as bad ("decompression bomb guard") from their
header alone, never decoded. Formats tf.data cannot decode (e.g. TIFF) are bad too.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from pml_jax.data.dataset import LabelledImages, split_labels
from pml_jax.errors import PmlError

TF_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})  # what tf.io.decode_image reads
SHOWN = 20  # bad files named in an error message


@dataclass(frozen=True)
class CheckReport:
    """Outcome of `check_images`: files checked, bad (fname, reason) pairs, whether they were dropped, warnings."""

    n_checked: int
    bad: tuple[tuple[str, str], ...] = ()
    skipped: bool = False
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        """One paragraph for logs: counts, then up to SHOWN bad files with reasons, then warnings."""
        verb = "skipped" if self.skipped else "found"
        lines = [f"checked {self.n_checked} images; {verb} {len(self.bad)} bad"]
        lines += [f"  {f}: {why}" for f, why in self.bad[:SHOWN]]
        if len(self.bad) > SHOWN:
            lines.append(f"  ... and {len(self.bad) - SHOWN} more")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_images(
    items: LabelledImages,
    skip_bad: bool = False,
    max_pixels: int | None = None,
    workers: int = 8,
    tables: bool = True,
) -> tuple[LabelledImages, CheckReport]:
    """Validate the table (`check_table`, unless `tables` is False: e.g. files to predict on, which
    have no training split) and every image of a file-based set.

    All bad files (missing, empty, not an image, truncated/corrupt, too large, not decodable by
    tf.data) are collected; then either one PmlError lists them (count + the first 20 with reasons)
    or, with `skip_bad`, their rows are dropped and the report names them. A set with `root` None
    (tfds) only gets the table checks. Decoding uses JPEG draft mode (1/8 scale), which still reads
    the whole entropy-coded stream, so truncation is caught at a fraction of a full decode.
    """
    notes = check_table(items) if tables else []
    if items.root is None:
        return items, CheckReport(0, warnings=tuple(notes))
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    fnames = list(dict.fromkeys(items.df["fname"]))
    root = Path(items.root)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(lambda f: image_problem(root / f, limit), fnames))
    bad = tuple((f, why) for f, why in zip(fnames, reasons) if why)
    if bad and not skip_bad:
        raise PmlError(f"{items.name}: {len(bad)} of {len(fnames)} images under {root} are unreadable "
                       "(each is named with its reason); --skip_bad true drops them\n"
                       + CheckReport(len(fnames), bad).summary())
    if bad:
        dropped = {f for f, _ in bad}
        df = items.df[~items.df["fname"].isin(dropped)].reset_index(drop=True)
        items = replace(items, df=df)  # the vocab (and so the model outputs) stays as declared
        notes = check_table(items) if tables else []
    return items, CheckReport(len(fnames), bad, skipped=bool(bad), warnings=tuple(notes))


def image_problem(path: Path, max_pixels: int) -> str | None:
    """Why `path` cannot be trained on (missing, empty, not an image, too large, corrupt), or None."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        return f"unreadable ({getattr(e, 'strerror', None) or e})"
    if not Path(path).is_file():
        return "not a file"
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    return f"too large: {w}x{h} = {w * h} pixels > {max_pixels} (decompression bomb guard)"
                if img.format not in TF_FORMATS:
                    return f"format {img.format} cannot be decoded by tf.data (use {sorted(TF_FORMATS)})"
                img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                img.load()
    except Image.DecompressionBombError as e:
        return f"too large: {e}"
    except Image.UnidentifiedImageError:
        return "not an image (PIL cannot identify it)"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return f"corrupt or truncated ({e})"
    return None


def check_table(items: LabelledImages) -> list[str]:
    """Table checks: raise PmlError for an empty set, an empty train split, a fname in both splits, or a
    validation label the train split lacks (fastai's vocab comes from train); return warnings
    (empty validation split, fnames repeated within a split)."""
    df = items.df
    if len(df) == 0:
        raise PmlError(f"{items.name}: the dataset has no items")
    is_valid = df["is_valid"].astype(bool).to_numpy()
    if is_valid.all():
        raise PmlError(f"{items.name}: the training split is empty ({len(df)} items, all is_valid)")
    notes = [] if is_valid.any() else [f"{items.name}: the validation split is empty"]
    train_names, valid_names = set(df["fname"][~is_valid]), set(df["fname"][is_valid])
    both = sorted(train_names & valid_names)
    if both:
        raise PmlError(f"{items.name}: {len(both)} fname(s) in both train and valid, e.g. {both[:5]}")
    repeats = df["fname"][df["fname"].duplicated()].unique().tolist()
    if repeats:
        notes.append(f"{items.name}: {len(repeats)} fname(s) listed more than once, e.g. {repeats[:5]}")
    train_vocab = {t for s in df["labels"][~is_valid] for t in split_labels(s)}
    for row in df.index[is_valid]:
        unseen = [t for t in split_labels(df.at[row, "labels"]) if t not in train_vocab]
        if unseen:
            raise PmlError(
                f"{items.name}: row {row} ({df.at[row, 'fname']}): validation label {unseen[0]!r} never "
                "occurs in the training split (fastai builds the vocab from the training items)"
            )
    return notes
