"""fastai's Adam (fastai.optimizer.Adam, decouple_wd=True) as an optax transformation.

Per param, in fastai's callback order:
    p        *= 1 - lr*wd                                   (only where the wd mask is True)
    grad_avg  = mom*grad_avg + (1-mom)*grad                 (dampened first moment)
    sqr_avg   = sqr_mom*sqr_avg + (1-sqr_mom)*grad^2
    step     += 1
    p        -= lr * (grad_avg / (1-mom^step)) / (sqrt(sqr_avg / (1-sqr_mom^step)) + eps)
with ``lr = lrs[group]`` and ``mom`` given at every step (traced, so schedules never recompile).
A param whose gradient is None (see `groups.split_trainable`) is skipped entirely: no update, no
wd, no state change, as fastai skips params without a grad. Freezing or unfreezing starts a fresh
state (`init`), as fastai's `freeze_to` clears it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

WD = 0.01  # fastai's default (decoupled) weight decay


class AdamState(NamedTuple):
    """Moments and step count of every param (None where `init` saw a None leaf)."""

    grad_avg: Any  # pytree like params, float32
    sqr_avg: Any  # pytree like params, float32
    step: Any  # pytree like params, int32 scalars


def _is_none(x: Any) -> bool:
    return x is None


def fastai_adam(
    groups: Any,
    decay: Any,
    *,
    sqr_mom: float = 0.99,
    eps: float = 1e-5,
    wd: float = WD,
) -> optax.GradientTransformationExtraArgs:
    """fastai Adam with decoupled weight decay, per-group lr and a scheduled momentum.

    groups: pytree like params of int group labels (`groups.param_groups`).
    decay:  pytree like params of bool, True where wd applies (`groups.decay_mask`).
    update(grads, state, params, *, lrs, mom): lrs f32[n_groups] (this step's lr of every group),
    mom f32[] (this step's beta1). Returns param deltas for `optax.apply_updates`; zeros for params
    whose grad is None.
    """

    def init(params: Any) -> AdamState:
        zeros = lambda p: None if p is None else jnp.zeros(jnp.shape(p), jnp.float32)  # noqa: E731
        step = lambda p: None if p is None else jnp.zeros((), jnp.int32)  # noqa: E731
        return AdamState(
            grad_avg=jax.tree.map(zeros, params, is_leaf=_is_none),
            sqr_avg=jax.tree.map(zeros, params, is_leaf=_is_none),
            step=jax.tree.map(step, params, is_leaf=_is_none),
        )

    def update_leaf(grad, grad_avg, sqr_avg, step, p, group, do_wd, lrs, mom):
        if grad is None:
            return (None if p is None else jnp.zeros_like(p)), grad_avg, sqr_avg, step
        lr = lrs[group]
        g = grad.astype(jnp.float32)
        pf = p.astype(jnp.float32)
        grad_avg = mom * grad_avg + (1.0 - mom) * g
        sqr_avg = sqr_mom * sqr_avg + (1.0 - sqr_mom) * jnp.square(g)
        step = step + 1
        n = step.astype(jnp.float32)
        debias1 = 1.0 - mom**n
        debias2 = 1.0 - sqr_mom**n
        delta = -(lr / debias1) * grad_avg / (jnp.sqrt(sqr_avg / debias2) + eps)
        if do_wd and wd != 0:
            delta = delta - (lr * wd) * pf
        return delta.astype(p.dtype), grad_avg, sqr_avg, step

    def update(grads, state: AdamState, params=None, *, lrs, mom, **_extra):
        if params is None:
            raise ValueError("fastai_adam needs params (weight decay and zero updates use them)")
        lrs = jnp.asarray(lrs, jnp.float32)
        mom = jnp.asarray(mom, jnp.float32)
        out = jax.tree.map(
            lambda *leaves: update_leaf(*leaves, lrs, mom),
            grads, state.grad_avg, state.sqr_avg, state.step, params, groups, decay,
            is_leaf=_is_none,
        )
        is_out = lambda x: isinstance(x, tuple)  # noqa: E731
        pick = lambda i: jax.tree.map(lambda t: t[i], out, is_leaf=is_out)  # noqa: E731
        return pick(0), AdamState(pick(1), pick(2), pick(3))

    # init jitted: one program instead of a compile per leaf shape op by op (~0.5 s for a resnet on a CPU)
    return optax.GradientTransformationExtraArgs(jax.jit(init), update)
