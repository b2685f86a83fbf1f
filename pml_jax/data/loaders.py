"""DataLoaders: the train and eval pipelines of one LabelledImages, with the run's settings bound."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from pml_jax.data import pipeline
from pml_jax.data.dataset import LabelledImages


@dataclass(frozen=True)
class DataLoaders:
    """What the Learner iterates. batch_size is GLOBAL (all processes); each process gets its slice."""

    items: LabelledImages
    size: int
    batch_size: int
    seed: int = 0
    min_scale: float = 0.35
    flip: bool = False
    fast_decode: bool = True  # train JPEGs decoded at a reduced DCT scale when the crop allows (see pipeline)
    process_index: int | None = None
    process_count: int | None = None

    @property
    def vocab(self) -> tuple[str, ...]:
        return self.items.vocab

    @property
    def steps_per_epoch(self) -> int:
        """Train batches per epoch (the last partial batch is dropped, as fastai does)."""
        return pipeline.train_steps(self.items, self.batch_size)

    def train(self, epoch: int, start_step: int = 0) -> Iterator[dict]:
        """Epoch `epoch`'s shuffled, augmented batches from batch `start_step` on (for resuming)."""
        return pipeline.train_batches(
            self.items, self.size, self.batch_size, self.seed, epoch, start_step=start_step,
            min_scale=self.min_scale, flip=self.flip, fast_decode=self.fast_decode,
            process_index=self.process_index, process_count=self.process_count)

    def valid(self, is_valid: bool = True) -> Iterator[dict]:
        """Every item of the validation (or train) split once, padded batches with a mask."""
        return pipeline.eval_batches(
            self.items, self.size, self.batch_size, is_valid,
            process_index=self.process_index, process_count=self.process_count)
