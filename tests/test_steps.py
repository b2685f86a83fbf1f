"""The jitted eval step computes the model's probabilities and loss; a phase's set-up; the CPU XLA
options of all steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pml_jax.data.normalize import normalize
from pml_jax.models import create_model
from pml_jax.train.groups import trainable_mask
from pml_jax.train.steps import make_eval_step, setup_phase


def test_eval_step_matches_the_model_applied_directly():
    model, variables = create_model("resnet18", 4, seed=1, lin_ftrs=[8])
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8),
             "target": (rng.random((3, 4)) < 0.5).astype(np.float32)}
    probs, loss = make_eval_step(model)(variables["params"], variables["batch_stats"], batch)
    logits = model.apply(variables, normalize(jnp.asarray(batch["image"])), train=False)
    np.testing.assert_allclose(probs, jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss, optax.sigmoid_binary_cross_entropy(logits, batch["target"]).mean(-1),
                               rtol=1e-5, atol=1e-6)
    assert probs.shape == (3, 4) and loss.shape == (3,)


def test_phase_setup_holds_fresh_adam_state_for_exactly_the_trainable_params():
    model, variables = create_model("resnet18", 4, seed=1, lin_ftrs=[8])
    params, stats = variables["params"], variables["batch_stats"]
    for frozen in (True, False):
        setup = setup_phase(model, params, stats, frozen)
        mask = jax.tree.leaves(trainable_mask(params, stats, frozen))
        for moments in (setup.opt_state.grad_avg, setup.opt_state.sqr_avg):
            shapes = jax.tree.map(lambda m, p: None if m is None else (m.shape == p.shape and not np.any(m)),
                                  moments, params, is_leaf=lambda x: x is None)
            assert [s is not None for s in jax.tree.leaves(shapes, is_leaf=lambda x: x is None)] == mask
            assert all(jax.tree.leaves(shapes))  # zeros shaped like their params
        assert sum(mask) < len(mask) if frozen else all(mask)


def test_cpu_options_are_used_when_jaxlib_knows_them_and_dropped_when_it_does_not(monkeypatch):
    from pml_jax.train import steps

    assert steps.compiler_options() == steps.CPU_OPTIONS  # this project's jaxlib (CPU) accepts them
    steps.compiler_options.cache_clear()
    monkeypatch.setattr(steps, "CPU_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"})
    try:
        assert steps.compiler_options() is None  # an older jaxlib: XLA's defaults, no failure
    finally:
        steps.compiler_options.cache_clear()
