"""Pure train and eval steps: state in, state out, compiled once per phase; a phase's set-up."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from pml_jax.data.normalize import normalize
from pml_jax.train.groups import decay_mask, merge_trainable, param_groups, split_trainable, trainable_mask
from pml_jax.train.optim import WD, AdamState, fastai_adam

# XLA options of every step on CPU: YNNPACK for reductions only. jaxlib 0.10 also hands it
# convolutions and matmuls by default, and its convolutions (above all their weight gradients)
# run 2-4x slower than XLA's own; its reductions (BatchNorm statistics) are faster. Same-run A/B
# vs the defaults, 128 px, batch 32: resnet18 train 1.6x, frozen 1.35x, eval 1.3x faster;
# resnet50 train 1.2x (bench/README.md).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def compiler_options() -> dict | None:
    """`CPU_OPTIONS` on the CPU backend if this jaxlib accepts them (older ones lack the
    option), else None: XLA's defaults."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(jnp.negative, compiler_options=CPU_OPTIONS).lower(jnp.zeros(())).compile()
    except Exception:  # noqa: BLE001 - jaxlib raises its own XlaRuntimeError for unknown options
        return None
    return CPU_OPTIONS


@flax.struct.dataclass
class TrainState:
    """Everything a train step changes. `opt_state` covers only the trainable params of the phase."""

    params: Any
    batch_stats: Any
    opt_state: Any


def bce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-item mean sigmoid BCE over classes: [B, C] logits and {0,1} targets -> float32 [B]."""
    return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets).mean(axis=-1)


def make_train_step(model, tx: optax.GradientTransformationExtraArgs, trainable: Any,
                    dtype=jnp.float32) -> Callable:
    """Compile `step(state, batch, lrs, mom, key) -> (state, loss)`.

    batch: {'image': uint8 [B,H,W,3], 'target': float32 [B,C]}; lrs: float32 [n_groups]; mom: beta1;
    key: the dropout key of this step. `trainable` (a static bool pytree like params) selects what is
    differentiated: frozen params are constants, so their weight gradients are never computed.
    The state is donated.
    """

    def step(state: TrainState, batch: dict, lrs, mom, key):
        images = normalize(batch["image"], dtype)
        train_params, frozen_params = split_trainable(state.params, trainable)

        def loss_fn(train_params):
            variables = {"params": merge_trainable(train_params, frozen_params),
                         "batch_stats": state.batch_stats}
            logits, updated = model.apply(variables, images, train=True,
                                          mutable=["batch_stats"], rngs={"dropout": key})
            return bce_loss(logits, batch["target"]).mean(), updated["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(train_params)
        updates, opt_state = tx.update(grads, state.opt_state, train_params, lrs=lrs, mom=mom)
        train_params = optax.apply_updates(train_params, updates)
        new_state = TrainState(merge_trainable(train_params, frozen_params), batch_stats, opt_state)
        return new_state, loss

    return jax.jit(step, donate_argnums=0, compiler_options=compiler_options())


class PhaseSetup(NamedTuple):
    """What a training phase (a freeze state) trains with."""

    step: Callable  # the jitted step(state, batch, lrs, mom, key) -> (state, loss) of `make_train_step`
    opt_state: AdamState  # a fresh optimizer state of the phase's trainable params


@functools.lru_cache(maxsize=16)
def _phase(model, frozen: bool, wd: float, dtype, params_def, stats_def) -> tuple:
    """(jitted step, optimizer, trainable mask) of a freeze state, one per model and param tree
    structure, so every phase, lr_find and a compile ahead (`Learner.compile_ahead`) share its
    compiled program."""
    params, batch_stats = (jax.tree.unflatten(d, [0] * d.num_leaves) for d in (params_def, stats_def))
    trainable = trainable_mask(params, batch_stats, frozen)
    tx = fastai_adam(param_groups(params), decay_mask(params, batch_stats), wd=wd)
    return make_train_step(model, tx, trainable, dtype), tx, trainable


def setup_phase(model, params: Any, batch_stats: Any, frozen: bool, *, wd: float = WD,
                dtype=jnp.float32) -> PhaseSetup:
    """The train step and fresh fastai Adam state of a phase with the body `frozen` or not:
    `groups.trainable_mask` picks what trains, with fastai's parameter groups and decay mask."""
    step, tx, trainable = _phase(model, frozen, wd, dtype, jax.tree.structure(params), jax.tree.structure(batch_stats))
    return PhaseSetup(step, tx.init(split_trainable(params, trainable)[0]))


@functools.lru_cache(maxsize=8)
def make_eval_step(model, dtype=jnp.float32) -> Callable:
    """Compile `step(params, batch_stats, batch) -> (probs float32 [B,C], loss float32 [B])`.

    Eval mode (running BatchNorm stats, no dropout); the loss is per item so padded rows can be
    masked out by the caller. One per model and dtype: it compiles once however often it is asked for.
    """

    def step(params, batch_stats, batch: dict):
        logits = model.apply({"params": params, "batch_stats": batch_stats},
                             normalize(batch["image"], dtype), train=False)
        return jax.nn.sigmoid(logits.astype(jnp.float32)), bce_loss(logits, batch["target"])

    return jax.jit(step, compiler_options=compiler_options())
