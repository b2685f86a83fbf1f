"""Checkpoints: orbax saves (in the background or not), safe to donate right after, complete on read."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pml_jax.train.checkpoint import Checkpoints


@pytest.mark.parametrize("background", [True, False])
def test_a_saved_state_donated_right_after_restores_as_saved(tmp_path, background):
    state = {"w": jnp.arange(4_000_000, dtype=jnp.float32), "b": jnp.ones((3,), jnp.int32)}
    want = jax.tree.map(np.array, jax.device_get(state))
    overwrite = jax.jit(lambda t: jax.tree.map(lambda x: x * 0 - 1, t), donate_argnums=0)
    with Checkpoints(tmp_path, background=background) as store:
        store.save(7, state, {"epoch": 1})
        jax.block_until_ready(overwrite(state))  # the buffers are reused before the files are written
        assert store.latest_step() == 7
        got, meta = store.restore(jax.tree.map(jnp.zeros_like, want))
    assert meta == {"epoch": 1}
    for key in want:
        np.testing.assert_array_equal(np.asarray(got[key]), want[key])


@pytest.mark.parametrize("background", [True, False])
def test_saves_keep_the_newest_two_and_a_reopened_store_sees_them(tmp_path, background):
    with Checkpoints(tmp_path, background=background) as store:
        for step in (1, 2, 3):
            store.save(step, {"x": jnp.full((5,), step, jnp.float32)}, {"step": step})
        store.save(3, {"x": jnp.full((5,), 30, jnp.float32)}, {"step": 30})  # the same step again: replaced
    again = Checkpoints.existing(tmp_path)
    assert again is not None
    with again:
        assert again.latest_step() == 3 and again.read_meta(2) == {"step": 2}
        got, meta = again.restore({"x": jnp.zeros((5,), jnp.float32)})
    np.testing.assert_array_equal(np.asarray(got["x"]), 30)
    assert meta == {"step": 30}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["2", "3"]
