"""Decode once: a run's decoded train images and its resized validation batches, kept in RAM.

`--cache auto` keeps them when they fit `MEMORY_SHARE` of the memory available when the loaders
first need them (else `none`: decode every epoch, as before); `ram` always keeps them. The cache
never changes what an epoch contains: the train images are the exact decodes the per-epoch path
crops from, filled in the order this process first needs them (so epoch 1 decodes each image
once, while it trains), and the validation batches are recorded the first time they are made.
The same ImageCache keeps, whatever the decision, what the pipeline learns of the images: file
header sizes (pml_jax.data.header_sizes) and a reader's encoded bytes (pml_jax.data.splits).
No TensorFlow here: the pipeline hands in the decoding stream.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from pml_jax.choices import CACHE_MODES
from pml_jax.data.header_sizes import HeaderSizes
from pml_jax.errors import PmlError

MEMORY_SHARE = 0.5  # of the available memory that `--cache auto` may fill


def available_memory() -> int:
    """Bytes the kernel could hand this process now: /proc/meminfo MemAvailable, else the free
    physical pages (os.sysconf)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gb(n: int) -> str:
    """Bytes as GB (MB below 0.1 GB)."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class CacheDecision:
    """Whether the run keeps decoded images in RAM: mode asked, bytes needed, the auto budget."""

    use: bool
    mode: str
    need: int
    budget: int | None = None

    def summary(self) -> str:
        """One line for the run log: the decision and the cache's size."""
        if self.mode == "none":
            return "cache: none (--cache none): every epoch decodes its images"
        if self.mode == "ram":
            return f"cache: ram (--cache ram), {_gb(self.need)} of decoded images"
        if self.use:
            return (f"cache: ram, {_gb(self.need)} of decoded images (auto: fits {MEMORY_SHARE:.0%} of "
                    f"the available memory, {_gb(self.budget)})")
        return (f"cache: none (auto: {_gb(self.need)} of decoded images would not fit "
                f"{MEMORY_SHARE:.0%} of the available memory, {_gb(self.budget)}): every epoch decodes "
                "its images")


def decide(mode: str, need: int, available: int | None = None) -> CacheDecision:
    """The cache decision for `need` bytes under `mode` (one of CACHE_MODES); `available`: bytes
    of free memory (default: available_memory(), read only for auto)."""
    if mode not in CACHE_MODES:
        raise PmlError(f"cache={mode!r} is not one of {list(CACHE_MODES)}")
    if mode != "auto":
        return CacheDecision(mode == "ram", mode, need)
    budget = int(MEMORY_SHARE * (available_memory() if available is None else available))
    return CacheDecision(need <= budget, mode, need, budget)


class DecodedImages:
    """The decoded uint8 [h, w, 3] images of one split, each stored once, by split position.

    `fill(stream)` starts a thread that stores what `stream` yields ((position, image) pairs);
    `get(position)` waits for it. A stream's error (a PmlError naming the file) reaches every
    `get` still waiting for an image of that fill.
    """

    def __init__(self, n: int):
        self._images: list[np.ndarray | None] = [None] * n
        self._cond = threading.Condition()
        self._fills = 0  # fills running
        self._error: BaseException | None = None

    def missing(self, positions: np.ndarray) -> np.ndarray:
        """The positions not stored yet, once each, in the order of `positions`."""
        _, first = np.unique(positions, return_index=True)
        wanted = positions[np.sort(first)]
        with self._cond:
            return np.array([p for p in wanted if self._images[p] is None], np.int64)

    @property
    def nbytes(self) -> int:
        with self._cond:
            return sum(im.nbytes for im in self._images if im is not None)

    def fill(self, stream: Callable[[], Iterator[tuple[int, np.ndarray]]]) -> threading.Event:
        """Store `stream()`'s images from a background thread; set the returned event to stop it
        (it then ends after the image it is decoding)."""
        stop = threading.Event()
        with self._cond:
            self._fills += 1
            self._error = None

        def run():
            try:
                for pos, image in stream():
                    with self._cond:
                        self._images[pos] = image
                        self._cond.notify_all()
                    if stop.is_set():
                        break
            except BaseException as err:  # noqa: BLE001 - handed to the waiting consumer
                if not stop.is_set():
                    with self._cond:
                        self._error = err
            finally:
                with self._cond:
                    self._fills -= 1
                    self._cond.notify_all()

        threading.Thread(target=run, daemon=True, name="pml_jax cache fill").start()
        return stop

    def get(self, pos: int) -> np.ndarray:
        """Image `pos`, waiting while a fill may still bring it; raises the fill's error."""
        with self._cond:
            while self._images[pos] is None:
                if self._error is not None:
                    raise self._error
                if self._fills == 0:
                    raise PmlError(f"decoded image {pos} was never filled in (the epoch's decoding stopped)")
                self._cond.wait()
            return self._images[pos]


class ImageCache:
    """What the loaders of one LabelledImages keep: the decision; what is known of its images
    whatever the decision (file header sizes, a reader's encoded bytes); and, when the decision
    keeps images, the decoded train images (per split) and the recorded validation batches (per
    size, batch size and process slice)."""

    def __init__(self, items):
        self.items = items
        self.decision: CacheDecision | None = None
        self.headers = HeaderSizes()
        self._decoded: dict[bool, DecodedImages] = {}
        self._sizes: dict[bool, np.ndarray] = {}
        self._encoded: dict[bool, tuple[list[bytes], np.ndarray]] = {}
        self.eval_batches: dict[tuple, list[dict]] = {}

    def encoded(self, is_valid: bool, read: Callable[[], tuple[list[bytes], np.ndarray]]):
        """A reader-backed split's (encoded images, float32 [N, C] targets): `read()` once, then kept."""
        if is_valid not in self._encoded:
            self._encoded[is_valid] = read()
        return self._encoded[is_valid]

    def sizes(self, is_valid: bool, read: Callable[[], np.ndarray]) -> np.ndarray:
        """int32 [N, 2] (height, width) of a split's images: `read()` once, then kept (the decoded
        images need no file once they are here)."""
        if is_valid not in self._sizes:
            self._sizes[is_valid] = read()
        return self._sizes[is_valid]

    def decoded(self, is_valid: bool, n: int) -> DecodedImages:
        """The decoded-image store of a split of `n` images (made on first use)."""
        return self._decoded.setdefault(is_valid, DecodedImages(n))
