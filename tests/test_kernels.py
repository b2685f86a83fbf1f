"""Kernel sets by backend: "auto" picks the CPU rewrites only on the CPU, both sets compute the same
logits, gradients and BatchNorm updates over the same param tree."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pml_jax.errors import PmlError
from pml_jax.models import create_model, resnet
from pml_jax.models.kernels import KERNELS, SMALL_OUTPUT, conv, max_pool, resolve_kernels
from pml_jax.models.resnet import init_variables


@pytest.mark.parametrize("kernels, backend, expected", [
    ("auto", "cpu", "cpu"), ("auto", "gpu", "xla"), ("auto", "cuda", "xla"), ("auto", "tpu", "xla"),
    ("cpu", "gpu", "cpu"), ("xla", "cpu", "xla"), ("xla", "tpu", "xla"),
])
def test_resolve_kernels_by_backend(kernels, backend, expected):
    assert resolve_kernels(kernels, backend) == expected


def test_auto_resolves_for_the_default_backend_and_bad_names_are_refused():
    assert resolve_kernels() == ("cpu" if jax.default_backend() == "cpu" else "xla")
    assert KERNELS == ("auto", "cpu", "xla")
    with pytest.raises(PmlError, match="kernels='cudnn' is not one of"):
        resolve_kernels("cudnn")
    with pytest.raises(PmlError, match="kernels='gpu'"):
        create_model("resnet18", 3, kernels="gpu")


def test_models_carry_the_resolved_set_and_the_same_params_for_every_set():
    assert resnet("resnet18").kernels == resolve_kernels()
    model, _ = create_model("resnet18", 3, head="linear", kernels="xla")
    assert model.body.kernels == "xla"
    x = jnp.zeros((1, 64, 64, 3))
    trees = [jax.eval_shape(lambda k, m=resnet("resnet50", 10, kernels=s): m.init(k, x), jax.random.key(0))
             for s in ("cpu", "xla")]
    assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
    assert jax.tree.leaves(trees[0]) == jax.tree.leaves(trees[1])  # same shapes and dtypes


@pytest.mark.parametrize("k, stride, pad, hw", [(1, 1, 0, (6, 6)), (1, 2, 0, (7, 5)), (3, 1, 1, (2, 2)),
                                                (3, 2, 1, (7, 7)), (3, 1, 1, (6, 6)), (7, 2, 3, (9, 9))])
def test_conv_sets_agree_in_value_and_both_gradients(k, stride, pad, hw):
    x = jax.random.normal(jax.random.key(0), (2, *hw, 5))
    w = jax.random.normal(jax.random.key(1), (k, k, 5, 6))
    outs = {}
    for kernels in ("cpu", "xla"):
        y, vjp = jax.vjp(lambda x, w, s=kernels: conv(x, w, stride, pad, s), x, w)
        outs[kernels] = (y, *vjp(jnp.cos(y)))
    for a, b in zip(outs["cpu"], outs["xla"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_max_pool_sets_agree_on_ties_in_value_and_gradient():
    x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 9, 8, 3))))  # many tied zeros and ones
    g = jax.random.normal(jax.random.key(1), (2, 5, 4, 3))
    outs = {s: jax.vjp(lambda x, s=s: max_pool(x, 3, 2, 1, s), x) for s in ("cpu", "xla")}
    np.testing.assert_array_equal(outs["cpu"][0], outs["xla"][0])
    # the same taps get the gradient; an input in several windows sums their shares in another order
    np.testing.assert_allclose(outs["cpu"][1](g)[0], outs["xla"][1](g)[0], rtol=1e-6, atol=0)


def _logits_grads_stats(arch: str, kernels: str, variables: dict, x, y, train: bool):
    """Logits, the gradient of a BCE loss w.r.t. the params, and the (train mode: updated) batch_stats."""
    model = resnet(arch, y.shape[1], kernels=kernels)

    def loss(params):
        logits, updated = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                                      train=train, mutable=["batch_stats"])
        return optax.sigmoid_binary_cross_entropy(logits, y).mean(), (logits, updated["batch_stats"])

    (_, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return logits, grads, stats


@pytest.mark.parametrize("arch, size, train", [
    ("resnet18", 64, True),  # layer3 (4x4) and layer4 (2x2) take the patch-matmul path
    ("resnet18", 136, True),  # layer4 is 5x5: no conv takes it
    # Eval mode: at init, resnet50's train-mode gradients on 2 images are chaotic (batch-statistics
    # BatchNorm explodes gradients with depth): a one-ulp change of the input moves the median
    # gradient leaf by 0.35% and some by 6%, whichever kernels run. With running statistics a
    # one-ulp change moves them ~1e-6, so the comparison stays sharp; the BatchNorm code that
    # train mode adds is the same in both sets.
    pytest.param("resnet50", 64, False, marks=pytest.mark.slow),
])
def test_both_sets_give_the_same_logits_gradients_and_statistics(arch, size, train):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    y = (jax.random.uniform(jax.random.key(1), (2, 10)) < 0.3).astype(jnp.float32)
    body = resnet(arch, None)
    layer4 = jax.eval_shape(lambda x: body.init_with_output(jax.random.key(0), x)[0], x).shape
    assert (layer4[1] * layer4[2] <= SMALL_OUTPUT) == (size == 64)
    variables = init_variables(resnet(arch, 10), jax.random.key(2), x)
    (la, ga, sa), (lb, gb, sb) = (_logits_grads_stats(arch, s, variables, x, y, train) for s in ("cpu", "xla"))
    # float rounding through the depth: logits within 3e-5 of their scale (measured worst 5e-6), each
    # gradient leaf within 2e-4 of its own largest magnitude (measured worst: resnet18 6e-6, resnet50 2e-6)
    np.testing.assert_allclose(la, lb, atol=3e-5 * float(jnp.abs(lb).max()), rtol=0)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ga)[0], jax.tree.leaves(gb)):
        np.testing.assert_allclose(a, b, atol=2e-4 * float(jnp.abs(b).max()), rtol=0, err_msg=str(path))
    for a, b in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_allclose(a, b, atol=1e-4 * float(jnp.abs(b).max()), rtol=0)
