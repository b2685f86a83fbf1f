"""Train batches cut from decoded images kept in RAM (pml_jax.data.cache), in host threads:
Pillow-resized crops (augment on the host) or crop buffers (augment on the device)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from pml_jax.data import host_crops
from pml_jax.data.cache import DecodedImages
from pml_jax.data.splits import Split
from pml_jax.data.streams import decoded_stream

WORKERS = 2  # host threads cutting crops (Pillow and numpy copies drop the GIL)
PREFETCH = 4  # batches made ahead


def host_crop(image: np.ndarray, window, size: int, flip: bool) -> np.ndarray:
    """fastai's crop of a decoded image: window (top, left, height, width) resized with Pillow
    BILINEAR to uint8 [size, size, 3] (the bits decode.crop_resize gives), then the optional flip."""
    top, left, ch, cw = (int(v) for v in window)
    out = np.asarray(Image.fromarray(np.ascontiguousarray(image[top:top + ch, left:left + cw]))
                     .resize((size, size), Image.BILINEAR))
    return out[:, ::-1] if flip else out


def cached_batches(split: Split, per_item: dict, store: DecodedImages, local: int,
                   make: Callable[[list[np.ndarray], slice], dict]) -> Iterator[dict]:
    """Batches of `local` rows of per_item cut from `store`: images the store lacks are decoded
    first (one background fill, in the order they are needed); make(images, rows) builds one
    batch in a host thread, PREFETCH batches ahead."""
    positions = per_item["pos"]
    n_batches = len(positions) // local
    stop = store.fill(lambda: decoded_stream(split, store.missing(positions)))

    def batch(b: int) -> dict:
        rows = slice(b * local, (b + 1) * local)
        out = make([store.get(p) for p in positions[rows]], rows)
        out["target"] = split.targets[positions[rows]]
        out["mask"] = np.ones(local, bool)
        return out

    pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="pml_jax crops")
    try:
        ahead = deque(pool.submit(batch, b) for b in range(min(PREFETCH, n_batches)))
        following = len(ahead)
        while ahead:
            done = ahead.popleft().result()
            if following < n_batches:
                ahead.append(pool.submit(batch, following))
                following += 1
            yield done
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


def host_maker(per_item: dict, size: int) -> Callable:
    """make() of `cached_batches` for host crops: 'image' uint8 [B, size, size, 3]."""
    def make(images, rows):
        out = np.empty((len(images), size, size, 3), np.uint8)
        for i, (image, window, flip) in enumerate(zip(images, per_item["window"][rows],
                                                      per_item["flip"][rows])):
            out[i] = host_crop(image, window, size, flip)
        return {"image": out}

    return make


def device_maker(per_item: dict, buffer: tuple[int, int]) -> Callable:
    """make() of `cached_batches` for device crops: 'image' uint8 [B, *buffer, 3] and CROP_KEYS."""
    def make(images, rows):
        out = np.zeros((len(images), *buffer, 3), np.uint8)
        for i, (image, (top, left, ch, cw), k) in enumerate(zip(images, per_item["window"][rows],
                                                                per_item["k"][rows])):
            host_crops.put_window(out[i], image[top:top + ch, left:left + cw], k)
        return {"image": out, **{key: per_item[key][rows] for key in host_crops.CROP_KEYS}}

    return make
