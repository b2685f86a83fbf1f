"""How an epoch is cut into batches: step counts, each process's share of a global batch, and
the seeds of an epoch's order and crops. numpy only."""

from __future__ import annotations

import math

import numpy as np

from pml_jax.data.dataset import LabelledImages
from pml_jax.errors import PmlError


def train_steps(items: LabelledImages, batch_size: int) -> int:
    """Batches per train epoch (global batch size; the last partial batch is dropped)."""
    return len(items.subset(False)) // batch_size


def eval_steps(items: LabelledImages, batch_size: int) -> int:
    """Batches to evaluate the validation split (global batch size; the last one is padded)."""
    return math.ceil(len(items.subset(True)) / batch_size)


def local_batch(batch_size: int, process_index: int | None, process_count: int | None):
    """(process index, process count, per-process batch size), checked; None = jax's."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if batch_size <= 0 or batch_size % process_count:
        raise PmlError(f"batch size {batch_size} must be a positive multiple of the process count "
                       f"{process_count}")
    if not 0 <= process_index < process_count:
        raise PmlError(f"process index {process_index} is not in [0, {process_count})")
    return process_index, process_count, batch_size // process_count


def shard(order: np.ndarray, process_index: int, process_count: int, local: int) -> np.ndarray:
    """This process's slice of each global batch of `order` (length a multiple of the global batch)."""
    return order.reshape(-1, process_count, local)[:, process_index].reshape(-1)


def seed_words(seed: int, epoch: int, stream: int) -> np.ndarray:
    """Two uint32 words drawn from (seed, epoch, stream); stream 0 orders items, 1 keys their crops."""
    if seed < 0 or epoch < 0:
        raise PmlError(f"seed {seed} and epoch {epoch} must be non-negative integers")
    return np.random.SeedSequence([seed, epoch, stream]).generate_state(2, np.uint32)
