"""Train input throughput: the tf.data pipeline vs a plain PIL + numpy loader, in one run.

    python bench/pipeline.py [--n 512] [--epochs 2] [--size 128] [--batch 64] [--repeats 3]

Writes N seeded 500x375 JPEGs (PASCAL VOC's typical shape) to a temp dir, then times, after a
warm-up epoch, `pml_jax.data.pipeline.train_batches` (fastai RandomResizedCrop, uint8 batches)
and the loader fastai's CPU path amounts to: per image PIL open -> RGB -> RandomResizedCrop
params -> crop -> resize BILINEAR -> np.asarray, stacked into batches, one process. Prints
images/s (wall) and CPU ms per image (all threads) of each, the ratio, per repeat and the best.
tf.data "exact" is fastai's bits (fast_decode=False), "fast" decodes JPEGs at reduced DCT scale
(fast_decode=True), "nondet" is deterministic=False (items may leave the parallel map out of order).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from pml_jax.data import pipeline  # noqa: E402
from pml_jax.data.dataset import LabelledImages  # noqa: E402


def write_jpegs(root: Path, n: int, seed: int = 0) -> LabelledImages:
    """n photo-like 500x375 JPEGs (smooth colour fields + noise, quality 90), all in the train split."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500] / 40.0
    for i in range(n):
        f = rng.uniform(0.3, 2.0, 3)
        img = np.stack([np.sin(xx * f[0] + i), np.cos(yy * f[1] - i), np.sin((xx + yy) * f[2])], -1)
        img = np.clip(img * 90 + 128 + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"{i}.jpg", quality=90)
    df = pd.DataFrame({"fname": [f"{i}.jpg" for i in range(n)], "labels": "a", "is_valid": False})
    return LabelledImages(df, root, ("a",), name="bench")


def pil_crop(w: int, h: int, rng: random.Random, min_scale: float = 0.35) -> tuple[int, int, int, int]:
    """fastai RandomResizedCrop.before_call with Python's random -> PIL box (left, top, right, bottom)."""
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        area = rng.uniform(min_scale, 1.0) * w * h
        r = math.exp(rng.uniform(lo, hi))
        nw, nh = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if nw <= w and nh <= h:
            left, top = rng.randint(0, w - nw), rng.randint(0, h - nh)
            return left, top, left + nw, top + nh
    cw, ch = (w, int(w * 4 / 3)) if w / h < 3 / 4 else (int(h * 4 / 3), h) if w / h > 4 / 3 else (w, h)
    return (w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch


def pil_epoch(paths: list[str], size: int, batch: int, seed: int) -> int:
    """One epoch of the PIL + numpy loader; returns the number of images produced."""
    rng = random.Random(seed)
    order = list(paths)
    rng.shuffle(order)
    done = 0
    for start in range(0, len(order) - batch + 1, batch):
        images = []
        for p in order[start:start + batch]:
            with Image.open(p) as im:
                im = im.convert("RGB")
                im = im.crop(pil_crop(*im.size, rng)).resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im))
        done += len(np.stack(images))
    return done


def tf_epoch(items: LabelledImages, size: int, batch: int, epoch: int, fast: bool,
             deterministic: bool) -> int:
    done = 0
    for b in pipeline.train_batches(items, size, batch, seed=0, epoch=epoch, process_index=0,
                                    process_count=1, fast_decode=fast, deterministic=deterministic):
        done += len(b["image"])
    return done


TF_VARIANTS = (("tf.data exact", False, True), ("tf.data fast", True, True),
               ("tf.data fast nondet", True, False))  # (name, fast_decode, deterministic)


def rate(fn, epochs: int) -> tuple[float, float]:
    """(images/s wall, CPU ms per image over all threads) over `epochs` calls of fn(epoch);
    epoch 0, the warm-up, is excluded."""
    fn(0)
    wall, cpu = time.perf_counter(), time.process_time()
    n = sum(fn(e) for e in range(1, epochs + 1))
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        items = write_jpegs(Path(tmp), args.n)
        paths = items.paths(False)
        print(f"{args.n} JPEGs 500x375 -> {args.size}px, batch {args.batch}, {os.cpu_count()} CPUs, "
              f"load avg {os.getloadavg()[0]:.1f}")
        best = {}
        for r in range(args.repeats):
            got = {"PIL": rate(lambda e: pil_epoch(paths, args.size, args.batch, e), args.epochs)}
            for name, fast, det in TF_VARIANTS:
                got[name] = rate(lambda e: tf_epoch(items, args.size, args.batch, e, fast, det),
                                 args.epochs)
            for k, v in got.items():
                best[k] = max(best.get(k, v), v)
            print(f"repeat {r} (load {os.getloadavg()[0]:.1f}): " + " | ".join(
                f"{k} {ips:.0f} img/s {ms:.2f} CPU-ms/img ({ips / got['PIL'][0]:.2f}x)"
                for k, (ips, ms) in got.items()))
        print("best: " + " | ".join(f"{k} {ips:.0f} img/s ({ips / best['PIL'][0]:.2f}x)"
                                    for k, (ips, _) in best.items()))

if __name__ == "__main__":
    main()
