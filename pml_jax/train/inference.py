"""Inference: a model's predictions over eval batches, the one loop behind validation, evaluate and predict."""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from pml_jax.errors import PmlError
from pml_jax.train.mesh import check_batch_size, make_mesh, replicate, replicated, shard_batch
from pml_jax.train.steps import make_eval_step


@functools.lru_cache(maxsize=8)
def _gather(mesh: Mesh):
    """Concatenate per-batch outputs in one program whose result every device (so every process) holds."""
    return jax.jit(lambda parts: tuple(jnp.concatenate(column) for column in zip(*parts)),
                   out_shardings=replicated(mesh))


def predict_batches(model, variables: dict, batches: Iterable[dict], mesh: Mesh | None = None,
                    dtype=jnp.float32, progress: str | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(probs [N,C], targets [N,C], mask bool [N], loss [N]) of `model` with `variables` over `batches`.

    batches: this process's slices of global eval batches ({'image', 'target', 'mask'}, padded rows
    masked False), sharded over `mesh` (default: every device); eval mode, `dtype` compute. The
    outputs stay on device, replicated, so every process holds all N rows in split order.
    progress: the label of a progress bar (None: no bar).
    """
    mesh = mesh if mesh is not None else make_mesh()
    step = make_eval_step(model, dtype)
    params, batch_stats = replicate((variables["params"], variables["batch_stats"]), mesh)
    parts = []
    for batch in tqdm(batches, desc=progress, leave=False, disable=None if progress else True):
        check_batch_size(len(batch["mask"]) * jax.process_count(), mesh)
        batch = shard_batch(batch, mesh)
        probs, loss = step(params, batch_stats, batch)
        parts.append((probs, batch["target"], batch["mask"], loss))
    if not parts:
        raise PmlError("nothing to predict on: no batches (an empty split?)")
    return _gather(mesh)(parts)


def compile_predict(model, variables, batch, n_batches: int, mesh: Mesh, dtype=jnp.float32) -> None:
    """Compile what `predict_batches` runs over `n_batches` batches like `batch` (ShapeDtypeStructs of
    a global batch, sharded as `shard_batch` shards it) with `variables` (params, batch_stats) as
    arrays or ShapeDtypeStructs, replicated on `mesh`: the eval step and the gather of its outputs,
    so neither compiles when the predictions are made."""
    step = make_eval_step(model, dtype).lower(*variables, batch).compile()
    probs, loss = (jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=s)
                   for o, s in zip(step.out_info, step.output_shardings))
    _gather(mesh).lower([(probs, batch["target"], batch["mask"], loss)] * n_batches).compile()
