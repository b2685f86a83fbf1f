"""ResNet vs the real torchvision (golden fixtures), param counts, names, inits, bf16."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pml_jax.errors import PmlError
from pml_jax.models import ARCHS, num_features, port_torchvision, resnet
from pml_jax.models.resnet import init_variables

_spec = importlib.util.spec_from_file_location(
    "tv_rule", __file__.rsplit("/", 1)[0] + "/fixtures/torchvision/rule.py"
)
rule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rule)
META, GOLDEN = rule.load_fixtures()


def n_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def ported():
    """{arch: classifier variables} from the synthetic torchvision weights."""
    return {
        arch: port_torchvision(rule.synthetic_state_dict(META["state_dict_shapes"][arch], seed), arch)
        for arch, seed in META["arch_seeds"].items()
    }


def body_of(variables):
    return {
        "params": {k: v for k, v in variables["params"].items() if k != "fc"},
        "batch_stats": variables["batch_stats"],
    }


def assert_close(got, ref):
    """1e-4 relative, elementwise, with the absolute floor 1e-4 * max|ref|."""
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_param_count_matches_torchvision(arch):
    shapes = jax.eval_shape(resnet(arch).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert n_params(shapes["params"]) == META["param_counts"][arch]


def logits_and_fmap(arch, variables, x):
    """Classifier logits and the body's feature map (the `layer4` output), from one forward."""
    apply = lambda v, x: resnet(arch).apply(  # noqa: E731
        v, x, capture_intermediates=lambda m, _: m.name == "layer4", mutable=["intermediates"]
    )
    logits, state = jax.jit(apply)(variables, x)
    return logits, state["intermediates"]["layer4"]["__call__"][0]


@pytest.mark.parametrize("arch", list(META["arch_seeds"]))
@pytest.mark.parametrize("tag", list(META["inputs"]))
def test_logits_and_pooled_features_match_torchvision(ported, arch, tag):
    seed, shape = META["inputs"][tag]
    logits, fmap = logits_and_fmap(arch, ported[arch], rule.images(seed, shape))
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert_close(logits, GOLDEN[f"{arch}/{tag}/logits"])
    assert fmap.shape == (2, math.ceil(shape[1] / 32), math.ceil(shape[2] / 32), num_features(arch))
    assert_close(fmap.mean(axis=(1, 2)), GOLDEN[f"{arch}/{tag}/pooled"])


def test_train_mode_uses_batch_stats_and_updates_running_stats_like_torch(ported):
    x = rule.images(*META["train_input"])
    variables = ported["resnet18"]
    logits, updates = jax.jit(
        lambda v, x: resnet("resnet18").apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, x)
    assert_close(logits, GOLDEN["resnet18/train/logits"])
    for name in META["train_stats"]:
        node = updates["batch_stats"]
        for part in name.split("."):
            node = node[part]
        assert_close(node["mean"], GOLDEN[f"resnet18/train/{name}.running_mean"])
        assert_close(node["var"], GOLDEN[f"resnet18/train/{name}.running_var"])


def test_param_tree_names_mirror_torchvision_keys():
    shapes = jax.eval_shape(resnet("resnet50").init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params, stats = shapes["params"], shapes["batch_stats"]
    assert set(params) == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"}
    assert sorted(params["layer3"]) == [str(i) for i in range(6)]
    block = params["layer2"]["0"]
    assert set(block) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample"}
    assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)  # HWIO
    assert block["downsample"]["0"]["kernel"].shape == (1, 1, 256, 512)
    assert set(block["downsample"]["1"]) == {"scale", "bias"}
    assert set(stats["layer2"]["0"]["downsample"]["1"]) == {"mean", "var"}
    assert params["fc"]["kernel"].shape == (2048, 1000)
    assert "downsample" not in resnet_block_names("resnet18", "layer1")


def resnet_block_names(arch, layer):
    shapes = jax.eval_shape(resnet(arch).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return set(shapes["params"][layer]["0"])


def test_init_follows_torchvision():
    variables = init_variables(resnet("resnet18"), jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    kernel = np.asarray(params["layer4"]["0"]["conv2"]["kernel"])  # fan_out = 3*3*512
    assert kernel.std() == pytest.approx(math.sqrt(2 / (9 * 512)), rel=0.02)
    assert np.abs(kernel).max() > 3 * kernel.std()  # untruncated normal
    assert np.all(np.asarray(params["bn1"]["scale"]) == 1) and np.all(np.asarray(params["bn1"]["bias"]) == 0)
    assert np.all(np.asarray(params["layer1"]["1"]["bn2"]["scale"]) == 1)  # no zero-init of last BN
    bound = 1 / math.sqrt(512)
    for leaf in (params["fc"]["kernel"], params["fc"]["bias"]):
        leaf = np.asarray(leaf)
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound
    assert np.all(np.asarray(variables["batch_stats"]["bn1"]["var"]) == 1)


def test_bf16_compute_keeps_float32_params(ported):
    x = rule.images(*META["inputs"]["128"])
    shapes = jax.eval_shape(resnet("resnet18", dtype=jnp.bfloat16).init, jax.random.key(0), x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype("float32")}
    logits = jax.eval_shape(resnet("resnet18", dtype=jnp.bfloat16).apply, shapes, x)
    assert logits.dtype == jnp.float32
    body = resnet("resnet18", num_classes=None, dtype=jnp.bfloat16)
    fmap = jax.jit(body.apply)(body_of(ported["resnet18"]), x)
    assert fmap.dtype == jnp.bfloat16 and fmap.shape == (2, 4, 4, 512)
    pooled, ref = np.asarray(fmap.astype(jnp.float32).mean(axis=(1, 2))), GOLDEN["resnet18/128/pooled"]
    assert np.abs(pooled - ref).max() < 0.05 * np.abs(ref).max()


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(PmlError, match="resnet7.*resnet18, resnet34, resnet50, resnet101, resnet152"):
        resnet("resnet7")


@pytest.mark.parametrize("k, stride, pad, hw", [(3, 1, 1, (2, 2)), (3, 2, 1, (4, 3)), (7, 2, 3, (5, 7)),
                                                (3, 1, 1, (4, 4)), (3, 2, 1, (7, 7))])
def test_small_output_conv_as_patch_matmul_equals_the_convolution(k, stride, pad, hw):
    from pml_jax.models.kernels import SMALL_OUTPUT
    from pml_jax.models.resnet import Conv

    x = jax.random.normal(jax.random.key(1), (2, *hw, 5))
    conv = Conv(6, k, stride, pad, kernels="cpu")
    variables = conv.init(jax.random.key(0), x)
    out_pixels = ((hw[0] + 2 * pad - k) // stride + 1) * ((hw[1] + 2 * pad - k) // stride + 1)
    assert out_pixels <= SMALL_OUTPUT  # these shapes take the patch-matmul path
    expected = jax.lax.conv_general_dilated(x, variables["params"]["kernel"], (stride, stride),
                                            ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cin, cout", [(12, 4), (4, 12), (6, 6)])
def test_channel_matmul_gradients_equal_autodiffs_of_the_plain_product(cin, cout):
    from pml_jax.models.kernels import channel_matmul

    x = jax.random.normal(jax.random.key(0), (2, 3, 5, cin))
    w = jax.random.normal(jax.random.key(1), (cin, cout))
    g = jax.random.normal(jax.random.key(2), (2, 3, 5, cout))
    ours = jax.jit(jax.vjp(channel_matmul, x, w)[1])(g)
    plain = jax.vjp(jnp.dot, x, w)[1](g)
    np.testing.assert_allclose(channel_matmul(x, w), jnp.dot(x, w), rtol=1e-6)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
