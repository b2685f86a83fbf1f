"""Train input throughput: the PIL loader, today's tf.data path and the decode-once cache, in one run.

    python bench/pipeline.py [--n 512] [--epochs 2] [--size 128] [--batch 64] [--repeats 3]

Writes N seeded 500x375 JPEGs (PASCAL VOC's typical shape) to a temp dir, then measures the host
supply rate (images/s wall, CPU ms per image over all threads) of:
- "PIL": the loader fastai's CPU path amounts to: per image PIL open -> RGB -> RandomResizedCrop
  params -> crop -> resize BILINEAR -> np.asarray, stacked into batches, one process;
- "tf.data exact" / "fast" / "fast nondet": `train_batches` without a cache, decoding every epoch
  (fastai's bits; reduced-scale JPEG decoding; deterministic=False), after a warm-up epoch;
- "cache epoch 1 <augment>": a fresh cache, its first epoch (each image decoded once, the cache
  filled while batches go out); "cache epoch 2+ <augment>": the following epochs, from RAM;
  augment "device" yields crop buffers (the host only cuts windows), "host" Pillow-resized crops.
Also: the device resize's cost per batch (jitted `finish_batch` on the default jax backend;
`--resize_only` times just that, without TensorFlow, e.g. on a GPU host) and the device path's
pixel difference to the real fastai's crops (tests/fixtures/transforms; mean and max |diff| in
levels of 255).
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

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from pml_jax.choices import MIN_SCALE  # noqa: E402
from pml_jax.data import host_crops, pipeline  # noqa: E402
from pml_jax.data.dataset import LabelledImages  # noqa: E402
from pml_jax.data.loaders import DataLoaders  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "transforms"


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


def pil_crop(w: int, h: int, rng: random.Random, min_scale: float = MIN_SCALE) -> tuple[int, int, int, int]:
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
AUGMENTS = ("device", "host")


def rate(fn, epochs: int, first: int = 1) -> tuple[float, float]:
    """(images/s wall, CPU ms per image over all threads) over calls fn(first) .. fn(first+epochs-1)."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = sum(fn(e) for e in range(first, first + epochs))
    return n / (time.perf_counter() - wall), (time.process_time() - cpu) / n * 1e3


def warm_rate(fn, epochs: int) -> tuple[float, float]:
    """`rate` after a warm-up call fn(0)."""
    fn(0)
    return rate(fn, epochs)


def cached_rates(items: LabelledImages, size: int, batch: int, augment: str, epochs: int) -> tuple:
    """(epoch 1 rate, epoch 2+ rate) of a fresh decode-once cache; each a `rate` pair."""
    dls = DataLoaders(items, size, batch, cache="ram", augment=augment, process_index=0, process_count=1)

    def epoch(e):
        return sum(len(b["image"]) for b in dls.train(e))

    return rate(epoch, 1, first=0), rate(epoch, epochs)


def resize_cost(size: int, batch: int, buffer: tuple[int, int], repeats: int = 5) -> float:
    """Median ms of the jitted device resize (`finish_batch`) of one batch of crop buffers uint8
    [batch, *buffer, 3] holding crops of seeded sizes, on the default jax backend (no TensorFlow)."""
    import jax

    from pml_jax.data.device_crops import finish_batch

    rng = np.random.default_rng(0)
    hw = rng.integers(size, np.array(buffer) + 1, (batch, 2)).astype(np.int32)
    buffers = jax.device_put({"image": rng.integers(0, 256, (batch, *buffer, 3), np.uint8), "hw": hw,
                              "box_hw": hw.astype(np.float32), "flip": rng.random(batch) < 0.5})
    jax.block_until_ready(finish_batch(buffers, size))  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(finish_batch(buffers, size))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def print_resize_cost(size: int, batch: int) -> None:
    import jax

    buffer = host_crops.buffer_hw(size, (500, 500))  # any VOC image, portrait or landscape
    ms = resize_cost(size, batch, buffer)
    print(f"device resize of a batch of {batch} crop buffers {buffer[0]}x{buffer[1]}x3 uint8 "
          f"({buffer[0] * buffer[1] * 3:,} bytes per image) to {size} px: {ms:.1f} ms on "
          f"{jax.devices()[0].device_kind} (load {os.getloadavg()[0]:.1f})")


def fastai_difference() -> tuple[float, float, int]:
    """Device path (host cut into the buffer, jitted resize) vs the real fastai's train crops of
    the fixtures: (mean |diff|, max |diff|, crops compared)."""
    from pml_jax.data import transforms as T
    from pml_jax.data.device_crops import resize_crops

    ref = np.load(FIXTURES / "images.npz")
    diffs = []
    for key in (k for k in ref.files if k.startswith("train/") and not k.endswith("uniforms")):
        _, name, size, _ = key.split("/")
        image = np.asarray(Image.open(FIXTURES / name).convert("RGB"))
        top, left, ch, cw = (int(v) for v in T.crop_window(*image.shape[:2], ref[key + "/uniforms"], MIN_SCALE))
        buffer = host_crops.buffer_hw(int(size), image.shape[:2])
        k, hw, box = host_crops.shrink_plan(np.array([[top, left, ch, cw]]), buffer)
        cut = host_crops.padded_window(image[top:top + ch, left:left + cw], k[0], *buffer)[None]
        got = np.asarray(resize_crops(cut, hw, box, np.zeros(1, bool), int(size)))[0]
        diffs.append(np.abs(got.astype(float) - ref[key]))
    return float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs)), len(diffs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resize_only", action="store_true",
                    help="only time the device resize (for an accelerator host without TensorFlow)")
    args = ap.parse_args()
    print_resize_cost(args.size, args.batch)
    if args.resize_only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        items = write_jpegs(Path(tmp), args.n)
        paths = items.paths(False)
        print(f"{args.n} JPEGs 500x375 -> {args.size}px, batch {args.batch}, {os.cpu_count()} CPUs, "
              f"load avg {os.getloadavg()[0]:.1f}")
        best = {}
        for r in range(args.repeats):
            got = {"PIL": warm_rate(lambda e: pil_epoch(paths, args.size, args.batch, e), args.epochs)}
            for name, fast, det in TF_VARIANTS:
                got[name] = warm_rate(lambda e: tf_epoch(items, args.size, args.batch, e, fast, det),
                                      args.epochs)
            for augment in AUGMENTS:
                first, later = cached_rates(items, args.size, args.batch, augment, args.epochs)
                got[f"cache epoch 1 {augment}"], got[f"cache epoch 2+ {augment}"] = first, later
            for k, v in got.items():
                best[k] = max(best.get(k, v), v)
            print(f"repeat {r} (load {os.getloadavg()[0]:.1f}):\n  " + "\n  ".join(
                f"{k:24s} {ips:6.0f} img/s {ms:5.2f} CPU-ms/img ({ips / got['PIL'][0]:.2f}x PIL)"
                for k, (ips, ms) in got.items()))
        print("best: " + " | ".join(f"{k} {ips:.0f} img/s ({ips / best['PIL'][0]:.2f}x)"
                                    for k, (ips, _) in best.items()))
    mean, worst, n = fastai_difference()
    print(f"device crops vs the real fastai's ({n} fixture crops): mean |diff| {mean:.3f}, max {worst:.0f} "
          "levels of 255")


if __name__ == "__main__":
    main()
