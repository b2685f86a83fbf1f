"""TensorBoard event files through tf.summary (TensorFlow imported only when a writer is made)."""

from __future__ import annotations

from pathlib import Path


class TensorBoard:
    """Writes scalars to `logdir` (one event file per run); `scalars(step, {'tag': value})`."""

    def __init__(self, logdir: str | Path):
        from pml_jax.data.tf_cpu import import_tf

        self._tf = import_tf()
        self._writer = self._tf.summary.create_file_writer(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        with self._writer.as_default():
            for tag, value in values.items():
                self._tf.summary.scalar(tag, float(value), step=int(step))

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
