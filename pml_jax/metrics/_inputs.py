"""Shape checks shared by the public metric functions (run outside jit, on static shapes)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pml_jax.errors import PmlError


def static_shape(x) -> tuple:
    """Static shape of an array, tracer, list or scalar."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def scores_and_targets(preds, targs, mask=None, *, where: str):
    """Check and return (preds [N, C], targs [N, C], mask [N] bool or None).

    preds/targs may be [N] (one class) or [N, C] of equal shape; mask, when given, is [N].
    Works on NumPy arrays, JAX arrays and tracers: only static shapes are inspected.
    """
    ps, ts = static_shape(preds), static_shape(targs)
    if ps != ts:
        raise PmlError(f"{where}: predictions have shape {ps} but targets have shape {ts}")
    if len(ps) not in (1, 2):
        raise PmlError(f"{where}: expected [N] or [N, C] arrays, got shape {ps}")
    if len(ps) == 1:
        preds, targs = jnp.reshape(preds, (-1, 1)), jnp.reshape(targs, (-1, 1))
    if mask is not None:
        ms = static_shape(mask)
        if ms != (ps[0],):
            raise PmlError(f"{where}: mask has shape {ms}, expected ({ps[0]},) (one flag per row)")
        mask = jnp.asarray(mask, bool)
    return preds, targs, mask


def threshold_grid(thresholds, *, where: str):
    """Check a 1-D, non-empty grid of cutoffs; returns it as float32 [T]."""
    shape = static_shape(thresholds)
    if len(shape) != 1 or shape[0] == 0:
        raise PmlError(f"{where}: thresholds must be a non-empty 1-D array, got shape {shape}")
    return jnp.asarray(thresholds, jnp.float32)


def choice(value, allowed, *, what: str):
    """Raise PmlError unless `value` is one of `allowed`."""
    if value not in allowed:
        raise PmlError(f"unknown {what} {value!r}; choose one of {list(allowed)}")
    return value
