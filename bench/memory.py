"""Resident memory over a long run: RSS after every epoch of a small demo training.

    python bench/memory.py [--epochs 20] [--synthetic_images 400] [--size 32] [--batch_size 16]

Trains the demo model (resnet18 from scratch, one-cycle, checkpoints each epoch) on the embedded
synthetic set and prints, per epoch, the current RSS and its high-water mark (MiB, /proc/self/status),
then the range and least-squares slope (MiB/epoch) of RSS from epoch 2 on.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def rss_mib() -> tuple[float, float]:
    """(current, peak) resident set size of this process, MiB."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class RssProbe:
    """A Learner `writer` that records RSS whenever an epoch's metrics arrive."""

    def __init__(self):
        self.rows: list[tuple[int, float, float, float]] = []
        self.t0 = time.perf_counter()

    def scalars(self, step: int, values: dict) -> None:
        if any(k.startswith("epoch/") for k in values):
            now, peak = rss_mib()
            self.rows.append((len(self.rows), now, peak, time.perf_counter() - self.t0))
            print(f"epoch {len(self.rows) - 1:>3}  rss {now:8.1f} MiB  peak {peak:8.1f} MiB  "
                  f"t {self.rows[-1][3]:6.1f} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--synthetic_images", type=int, default=400)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=16)
    args = p.parse_args()

    from pml_jax import workflow
    from pml_jax.config import preset
    from pml_jax.models import create_model
    from pml_jax.train.compile_cache import enable_compile_cache
    from pml_jax.train.learner import Learner

    enable_compile_cache()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset("demo", synthetic_images=args.synthetic_images, size=args.size,
                     batch_size=args.batch_size, epochs=args.epochs, workdir=tmp)
        items = workflow.load_items(cfg)
        model, variables = create_model(cfg.arch, len(items.vocab), None, seed=cfg.seed)
        probe = RssProbe()
        print(f"start  rss {rss_mib()[0]:8.1f} MiB  ({args.synthetic_images} images, {args.size} px, "
              f"batch {args.batch_size}, {args.epochs} epochs)", flush=True)
        learner = Learner(model, variables, workflow.data_loaders(cfg, items), wd=cfg.wd, seed=cfg.seed,
                          workdir=tmp, writer=probe, progress=False, log=lambda _: None)
        learner.fit_one_cycle(cfg.epochs, cfg.base_lr, cfg.pct_start)
    settled = probe.rows[2:]  # past compilation and the first epochs' allocator growth
    epochs, rss = [r[0] for r in settled], [r[1] for r in settled]
    slope = np.polyfit(epochs, rss, 1)[0] if len(settled) > 1 else float("nan")
    print(f"epochs {epochs[0]}-{epochs[-1]}: rss {min(rss):.1f}-{max(rss):.1f} MiB, least-squares slope "
          f"{slope:+.2f} MiB/epoch; peak {probe.rows[-1][2]:.1f} MiB")

if __name__ == "__main__":
    main()
