"""max_pool: torch's values and gradient routing (golden fixtures), flax's on random ties, in jit."""

from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from pml_jax.models.pool import max_pool

GOLDEN = np.load(Path(__file__).parent / "fixtures/max_pool/max_pool.npz")
CASES = sorted({key.split("/")[0] for key in GOLDEN.files})


@pytest.mark.parametrize("case", CASES)
def test_values_and_input_gradient_match_torch(case):
    x, g = GOLDEN[f"{case}/x"], GOLDEN[f"{case}/g"]
    k, s, p = (int(v) for v in GOLDEN[f"{case}/ksp"])
    y, vjp = jax.vjp(lambda x: max_pool(x, k, s, p), x)
    np.testing.assert_array_equal(y, GOLDEN[f"{case}/y"])
    # each input gets the sum of the gradients routed to it: equal up to float summation order
    np.testing.assert_allclose(vjp(g)[0], GOLDEN[f"{case}/dx"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 10, 7, 5), (2, 5, 5, 2)])
def test_matches_flax_reduce_window_pool_under_jit_on_ties(shape):
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal(shape)).astype(np.float32)  # many equal values per window
    g = rng.standard_normal((shape[0], (shape[1] - 1) // 2 + 1, (shape[2] - 1) // 2 + 1, shape[3]))

    def flax_pool(x):
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    ours = jax.jit(jax.grad(lambda x: (max_pool(x) * g).sum()))(x)
    theirs = jax.grad(lambda x: (flax_pool(x) * g).sum())(x)
    np.testing.assert_array_equal(max_pool(x), flax_pool(x))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
    # the gradient is routed, not spread: every window sends all of its gradient to one input
    np.testing.assert_allclose(ours.sum(), g.sum(), rtol=1e-5)
