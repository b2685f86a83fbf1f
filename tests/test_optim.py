"""fastai Adam (optim.fastai_adam) against the real fastai 2.8, alone and inside fine_tune."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from pml_jax.train.groups import (
    decay_mask,
    merge_trainable,
    param_groups,
    split_trainable,
    trainable_mask,
)
from pml_jax.train.optim import fastai_adam
from pml_jax.train.schedules import fine_tune_plan

REF = pathlib.Path(__file__).parent / "fixtures" / "fastai"


def make_step(tx):
    """The jitted optimizer step the learner will run (lrs and mom traced)."""

    @jax.jit
    def step(params, grads, state, lrs, mom):
        updates, state = tx.update(grads, state, params, lrs=lrs, mom=mom)
        return optax.apply_updates(params, updates), state

    return step


def test_adam_one_and_five_steps_match_fastai():
    ref = np.load(REF / "adam.npz")
    params = {k: jnp.asarray(ref[f"init/{k}"]) for k in ("w0", "b0", "w1")}
    tx = fastai_adam(groups={"w0": 0, "b0": 0, "w1": 1}, decay={"w0": True, "b0": False, "w1": True}, wd=0.01)
    step = make_step(tx)
    state = tx.init(params)
    for i in range(5):
        grads = {k: jnp.asarray(ref[f"grad/{k}"][i]) for k in params}
        params, state = step(params, grads, state, ref["lrs"][i], ref["moms"][i])
        if i in (0, 4):
            for k in params:
                np.testing.assert_allclose(params[k], ref[f"after{i + 1}/{k}"], rtol=0, atol=1e-6)
    assert all(int(s) == 5 for s in jax.tree.leaves(state.step))


def test_weight_decay_is_decoupled_and_uses_group_lr():
    """Zero grads: Adam's step is 0, so only p *= 1 - lr*wd remains, with the group's lr."""
    tx = fastai_adam({"a": 0, "b": 1, "c": 1}, {"a": True, "b": True, "c": False}, wd=0.1)
    params = {k: jnp.full((2,), 2.0) for k in "abc"}
    grads = jax.tree.map(jnp.zeros_like, params)
    new, _ = make_step(tx)(params, grads, tx.init(params), jnp.array([0.5, 1.0]), 0.9)
    np.testing.assert_allclose(new["a"], 2.0 * (1 - 0.5 * 0.1))
    np.testing.assert_allclose(new["b"], 2.0 * (1 - 1.0 * 0.1))
    np.testing.assert_allclose(new["c"], 2.0)


def test_schedule_changes_do_not_recompile():
    tx = fastai_adam({"w": 0}, {"w": True})
    traces = []

    @jax.jit
    def step(params, grads, state, lrs, mom):
        traces.append(1)
        updates, state = tx.update(grads, state, params, lrs=lrs, mom=mom)
        return optax.apply_updates(params, updates), state

    params, state = {"w": jnp.ones(3)}, tx.init({"w": jnp.ones(3)})
    for lr, mom in [(1e-3, 0.95), (2e-3, 0.9), (5e-2, 0.85)]:
        params, state = step(params, {"w": jnp.ones(3)}, state, jnp.array([lr]), jnp.float32(mom))
    assert len(traces) == 1


def test_none_grads_leave_param_and_state_untouched():
    tx = fastai_adam({"frozen": 0, "live": 0}, {"frozen": True, "live": True})
    params = {"frozen": jnp.ones(2), "live": jnp.ones(2)}
    state = tx.init(params)
    new, state = make_step(tx)(params, {"frozen": None, "live": jnp.ones(2)}, state, jnp.array([0.1]), 0.9)
    np.testing.assert_array_equal(new["frozen"], params["frozen"])  # no step, no wd
    assert int(state.step["frozen"]) == 0 and int(state.step["live"]) == 1
    np.testing.assert_array_equal(state.grad_avg["frozen"], 0.0)
    assert not np.allclose(new["live"], params["live"])


def test_init_on_the_trainable_subset_holds_no_state_for_frozen():
    params = {"frozen": jnp.ones(2), "live": jnp.ones(2)}
    trainable, _ = split_trainable(params, {"frozen": False, "live": True})
    state = fastai_adam({"frozen": 0, "live": 0}, {"frozen": True, "live": True}).init(trainable)
    assert state.grad_avg["frozen"] is None and state.grad_avg["live"].shape == (2,)


def contract_trees(ref):
    """The fixture's tiny torch model as our params/batch_stats trees; torch name -> (path, transpose)."""
    def path_of(name):  # '0.layer3.1.weight' -> ('body', 'layer3', '1', 'weight')
        part, *rest = name.split(".")
        return ({"0": "body", "1": "head"}[part], *rest)

    bn = {path_of(m) for m in ref["bn_modules"]}
    flat, where = {}, {}
    for name in ref["names"]:
        *module, leaf = path_of(name)
        module = tuple(module)
        leaf = "bias" if leaf == "bias" else ("scale" if module in bn else "kernel")
        transpose = leaf == "kernel"
        flat[module + (leaf,)] = ref[f"init/{name}"].T if transpose else ref[f"init/{name}"]
        where[name] = (module + (leaf,), transpose)
    stats = traverse_util.unflatten_dict(
        {m + (k,): np.zeros(1) for m in bn for k in ("mean", "var")})
    return traverse_util.unflatten_dict(flat), stats, where


def test_fine_tune_trajectory_matches_fastai():
    """fastai fine_tune(3, base_lr=3e-3, freeze_epochs=4), 5 steps/epoch, fed fastai's own grads:
    our groups, masks, schedules and Adam (fresh state per phase) give its params at every step."""
    ref = np.load(REF / "fine_tune.npz")
    params, stats, where = contract_trees(ref)
    groups, decay = param_groups(params), decay_mask(params, stats)
    for name, (path, _) in where.items():  # our labels are fastai's
        assert traverse_util.flatten_dict(groups)[path] == ref["group"][list(ref["names"]).index(name)]
        assert traverse_util.flatten_dict(decay)[path] == ref["do_wd"][list(ref["names"]).index(name)]
    params = jax.tree.map(jnp.asarray, params)
    tx = fastai_adam(groups, decay)
    step = make_step(tx)
    i = 0
    for phase in fine_tune_plan(3, 5, base_lr=3e-3, freeze_epochs=4):
        mask = trainable_mask(params, stats, frozen=phase.frozen)
        flat_mask = traverse_util.flatten_dict(mask)
        trainable, frozen = split_trainable(params, mask)
        state = tx.init(trainable)
        for lrs, mom in zip(phase.lrs, phase.moms):
            flat_grads = {}
            for name, (path, transpose) in where.items():
                assert bool(ref[f"has_grad/{name}"][i]) == flat_mask[path], (name, i)
                g = ref[f"grad/{name}"][i]
                flat_grads[path] = jnp.asarray(g.T if transpose else g)
            grads, _ = split_trainable(traverse_util.unflatten_dict(flat_grads), mask)
            trainable, state = step(trainable, grads, state, jnp.asarray(lrs, jnp.float32), jnp.float32(mom))
            flat = traverse_util.flatten_dict(merge_trainable(trainable, frozen))
            for name, (path, transpose) in where.items():
                want = ref[f"value/{name}"][i]
                np.testing.assert_allclose(flat[path], want.T if transpose else want, rtol=0, atol=1e-6,
                                           err_msg=f"{name} after step {i}")
            i += 1
        params = merge_trainable(trainable, frozen)
    assert i == len(ref["lr"])


def test_frozen_body_needs_no_gradient():
    """The learner's pattern: differentiate w.r.t. the trainable subset only."""
    params = {"body": {"conv1": {"kernel": jnp.ones((2, 2))}, "bn1": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}},
              "head": {"linear1": {"kernel": jnp.ones((2, 1))}}}
    stats = {"body": {"bn1": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}}
    mask = trainable_mask(params, stats, frozen=True)
    trainable, frozen = split_trainable(params, mask)

    def loss(trainable, x):
        p = merge_trainable(trainable, jax.lax.stop_gradient(frozen))
        h = (x @ p["body"]["conv1"]["kernel"]) * p["body"]["bn1"]["scale"] + p["body"]["bn1"]["bias"]
        return jnp.sum(h @ p["head"]["linear1"]["kernel"])

    grads = jax.grad(loss)(trainable, jnp.ones((3, 2)))
    assert grads["body"]["conv1"]["kernel"] is None
    assert grads["head"]["linear1"]["kernel"].shape == (2, 1)
    tx = fastai_adam(param_groups(params), decay_mask(params, stats))
    new, _ = make_step(tx)(trainable, grads, tx.init(trainable), jnp.array([1e-3, 1e-3, 1e-2]), 0.9)
    assert new["body"]["conv1"]["kernel"] is None
    assert not np.allclose(new["body"]["bn1"]["scale"], 1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_update_keeps_param_dtype(dtype):
    tx = fastai_adam({"w": 0}, {"w": True})
    params = {"w": jnp.ones(3, dtype)}
    updates, _ = tx.update({"w": jnp.ones(3, dtype)}, tx.init(params), params, lrs=jnp.array([1e-2]), mom=0.9)
    assert updates["w"].dtype == dtype
