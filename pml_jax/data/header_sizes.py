"""Image sizes from their headers, without decoding: one file, a file kept while it is unchanged,
and a whole split (every unreadable header named in one error)."""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from pml_jax.data.checks import SHOWN
from pml_jax.errors import PmlError


def header_hw(source) -> tuple[int, int]:
    """(height, width) px from an image's header (a path or encoded bytes), without decoding it."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return im.height, im.width


class HeaderSizes:
    """(height, width) of image files by path, each header read again only when the file's
    modification time or size changes. One per ImageCache (one LabelledImages), so it holds at
    most one entry per file of that set."""

    def __init__(self):
        self._known: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}  # path -> (stamp, hw)

    def of_file(self, path: str) -> tuple[int, int]:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._known.get(path)
        if hit is None or hit[0] != stamp:
            hit = self._known[path] = (stamp, header_hw(path))
        return hit[1]


def split_sizes(name: str, sources: Sequence, names: Sequence[str],
                files: HeaderSizes | None) -> np.ndarray:
    """int32 [N, 2] (height, width) px of `sources`: paths read through `files`, or encoded bytes
    (files None). Images whose header cannot be read are collected and named (by `names`) in one
    PmlError that starts with the set's `name`."""
    hw, bad = np.zeros((len(sources), 2), np.int32), []
    for i, source in enumerate(sources):
        try:
            hw[i] = header_hw(source) if files is None else files.of_file(source)
        except Exception as err:  # noqa: BLE001 - OSError, PIL's format and size errors
            bad.append(f"{names[i]}: {str(err) or type(err).__name__}")
    if bad:
        shown = "\n  ".join(bad[:SHOWN])
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise PmlError(f"{name}: cannot read {len(bad)} image(s):\n  {shown}{more}")
    return hw
