"""DataLoaders: the train and eval pipelines of one LabelledImages, with the run's settings bound."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import jax
import numpy as np

from pml_jax.choices import AUGMENT_MODES, CACHE_MODES, FAST_DECODE, MIN_SCALE
from pml_jax.data import pipeline
from pml_jax.data.batch_plan import eval_steps, train_steps
from pml_jax.data.cache import CacheDecision, ImageCache, decide
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.device_crops import finish_batch
from pml_jax.errors import PmlError


@dataclass(frozen=True)
class DataLoaders:
    """What the Learner iterates. batch_size is GLOBAL (all processes); each process gets its slice."""

    items: LabelledImages
    size: int
    batch_size: int
    seed: int = 0
    min_scale: float = MIN_SCALE
    flip: bool = False
    fast_decode: bool = FAST_DECODE  # train JPEGs at a reduced DCT scale when the crop allows (pml_jax.choices)
    process_index: int | None = None
    process_count: int | None = None
    cache: str = CACHE_MODES[0]  # auto: decoded images kept in RAM if they fit (pml_jax.data.cache)
    augment: str = AUGMENT_MODES[0]  # auto: where train crops are resized, see `augment_on`
    store: ImageCache | None = field(default=None, compare=False, repr=False)  # shared by replace()

    def __post_init__(self):
        for name, allowed in (("cache", CACHE_MODES), ("augment", AUGMENT_MODES)):
            if getattr(self, name) not in allowed:
                raise PmlError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if self.store is None or self.store.items is not self.items:
            object.__setattr__(self, "store", ImageCache(self.items))

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.items.vocab

    @property
    def steps_per_epoch(self) -> int:
        """Train batches per epoch (the last partial batch is dropped, as fastai does)."""
        return train_steps(self.items, self.batch_size)

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """(shape, dtype) of every entry of a GLOBAL batch, train (after `finish`) and validation alike:
        image uint8 [B, size, size, 3], target float32 [B, C], mask bool [B]."""
        b = self.batch_size
        return {"image": ((b, self.size, self.size, 3), np.dtype(np.uint8)),
                "target": ((b, len(self.vocab)), np.dtype(np.float32)), "mask": ((b,), np.dtype(bool))}

    @property
    def valid_rows(self) -> int:
        """Rows of the gathered validation predictions: the split padded to whole global batches."""
        return eval_steps(self.items, self.batch_size) * self.batch_size

    def check_fit(self) -> None:
        """PmlError unless the train split fills one batch and the validation split has an item."""
        n_train = len(self.items.subset(False))
        if n_train < self.batch_size:
            raise PmlError(f"{self.items.name}: the training split has {n_train} item(s), fewer than one "
                           f"batch of {self.batch_size}: lower the batch size (--batch_size) to at most {n_train}")
        self.check_valid()

    def check_valid(self) -> None:
        """PmlError unless the validation split has an item."""
        if len(self.items.subset(True)) == 0:
            raise PmlError(f"{self.items.name}: the validation split is empty, so nothing can be validated: "
                           "mark some items is_valid (csv), or choose another split (voc: --valid_split)")

    @property
    def augment_on(self) -> str:
        """'device' or 'host': `augment`, with auto = host on a CPU backend (the "device" is then
        the same cores, and Pillow's resize costs them less than the dense resize: bench/README.md),
        else device."""
        if self.augment != "auto":
            return self.augment
        return "host" if jax.default_backend() == "cpu" else "device"

    def cache_bytes(self) -> int:
        """Bytes the cache holds when full: the decoded train images (from their headers) and the
        resized validation batches."""
        hw = pipeline.image_sizes(self.items, False, self.store).astype(np.int64)
        return int((hw[:, 0] * hw[:, 1]).sum() * 3 + self.valid_rows * self.size * self.size * 3)

    def cache_decision(self) -> CacheDecision:
        """Whether the images are kept in RAM (decided once per `cache` mode; print .summary())."""
        if self.store.decision is None or self.store.decision.mode != self.cache:
            self.store.decision = decide(self.cache, 0 if self.cache == "none" else self.cache_bytes())
        return self.store.decision

    def train(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Epoch `epoch`'s shuffled, augmented batches from batch `start_step` on (for resuming);
        with augment on the device, crop buffers that `finish` turns into images."""
        return pipeline.train_batches(
            self.items, self.size, self.batch_size, self.seed, epoch, start_step=start_step,
            min_scale=self.min_scale, flip=self.flip, fast_decode=self.fast_decode,
            augment=self.augment_on, cache=self.cache_decision().use, store=self.store,
            process_index=self.process_index, process_count=self.process_count)

    def finish(self, batch: dict) -> dict:
        """A train batch as the step takes it: crop buffers (augment on the device) resized to
        uint8 [B, size, size, 3] by one jitted function where the batch lives; others unchanged."""
        return finish_batch(batch, self.size) if "box_hw" in batch else batch

    def valid(self) -> Iterator[dict]:
        """Every item of the validation split once, in padded batches with a mask."""
        return pipeline.eval_batches(
            self.items, self.size, self.batch_size, cache=self.cache_decision().use, store=self.store,
            process_index=self.process_index, process_count=self.process_count)
