"""fastai head vs the real fastai 2.8 create_head (golden fixtures), inits, dropout; the linear
head; create_model."""

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pml_jax.errors import PmlError
from pml_jax.models import Classifier, LinearHead, concat_pool, create_head, create_model, resnet
from pml_jax.models.head import head_dropouts

_spec = importlib.util.spec_from_file_location(
    "tv_rule", __file__.rsplit("/", 1)[0] + "/fixtures/torchvision/rule.py"
)
rule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rule)
META, GOLDEN = rule.load_fixtures()
HEAD = META["head"]
BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def head_variables(values):
    """fastai-layout arrays keyed like 'bn0.weight', 'linear1.weight' -> Flax head variables."""
    out = {"params": {}, "batch_stats": {}}
    for key, value in values.items():
        name, leaf = key.rsplit(".", 1)
        if name.startswith("linear"):
            col, flax_leaf, value = (
                "params",
                "kernel" if leaf == "weight" else "bias",
                value.T if leaf == "weight" else value,
            )
        else:
            col, flax_leaf = BN_LEAVES[leaf]
        out[col].setdefault(name, {})[flax_leaf] = jnp.asarray(value)
    return out


def build(tag):
    cfg = HEAD["configs"][tag]
    head = create_head(HEAD["nf"], HEAD["n_out"], **cfg["kwargs"])
    shapes = {k: v for k, v in cfg["shapes"].items() if not k.endswith("num_batches_tracked")}
    return head, head_variables(rule.synthetic_state_dict(shapes, HEAD["seed"]))


def features():
    return rule.images(*HEAD["input"])


@pytest.mark.parametrize("tag", ["default", "custom", "lin_first"])
def test_eval_output_matches_fastai(tag):
    head, variables = build(tag)
    template = jax.eval_shape(head.init, jax.random.key(0), features())
    assert jax.tree_util.tree_map(jnp.shape, template) == jax.tree_util.tree_map(jnp.shape, variables)
    out = head.apply(variables, features())
    np.testing.assert_allclose(np.asarray(out), GOLDEN[f"head/{tag}/out"], rtol=1e-5, atol=1e-5)


def test_train_mode_batch_stats_match_fastai():
    head, variables = build("train_p0")
    out, updates = head.apply(variables, features(), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), GOLDEN["head/train_p0/out"], rtol=1e-5, atol=1e-5)
    for name, stats in updates["batch_stats"].items():
        np.testing.assert_allclose(
            np.asarray(stats["mean"]), GOLDEN[f"head/train_p0/{name}.running_mean"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(stats["var"]), GOLDEN[f"head/train_p0/{name}.running_var"], rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("tag", list(HEAD["configs"]))
def test_init_matches_fastai_apply_init(tag):
    head = create_head(HEAD["nf"], HEAD["n_out"], **HEAD["configs"][tag]["kwargs"])
    params = head.init(jax.random.key(1), features())["params"]
    expected = HEAD["configs"][tag]["inits"]
    got_names = {
        f"{n}.{'weight' if leaf in ('scale', 'kernel') else 'bias'}" for n, p in params.items() for leaf in p
    }
    assert got_names == set(expected)
    for key, want in expected.items():
        name, leaf = key.rsplit(".", 1)
        if name.startswith("bn"):
            value = np.asarray(params[name]["scale" if leaf == "weight" else "bias"])
            assert sorted({round(float(v), 6) for v in value}) == want, key
        elif leaf == "bias":
            assert np.all(np.asarray(params[name]["bias"]) == 0)
        else:
            kernel = np.asarray(params[name]["kernel"])
            if kernel.size >= 1000:  # kaiming normal, fan_in: std sqrt(2 / fan_in), like fastai's
                assert kernel.std() == pytest.approx(math.sqrt(2 / kernel.shape[0]), rel=0.03)
                assert kernel.std() == pytest.approx(want, rel=0.05)


def test_param_count_matches_fastai_for_resnet50_20_classes():
    shapes = jax.eval_shape(create_head(2048, 20).init, jax.random.key(0), jnp.zeros((1, 4, 4, 2048)))
    assert (
        sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes["params"]))
        == HEAD["resnet50_20_params"]
    )
    assert set(shapes["params"]) == {"bn0", "linear0", "bn1", "linear1"}
    assert shapes["params"]["linear0"]["kernel"].shape == (4096, 512)


def test_concat_pool_is_max_then_mean():
    x = jnp.arange(2 * 2 * 3 * 4, dtype=jnp.float32).reshape(2, 2, 3, 4)
    out = concat_pool(x)
    np.testing.assert_array_equal(out[:, :4], x.max(axis=(1, 2)))
    np.testing.assert_allclose(out[:, 4:], x.mean(axis=(1, 2)))


def test_dropout_needs_and_follows_the_rng_in_train_mode():
    head = create_head(HEAD["nf"], HEAD["n_out"])
    variables = head.init(jax.random.key(0), features())
    run = lambda seed: head.apply(
        variables,
        features(),
        train=True,
        mutable=["batch_stats"],  # noqa: E731
        rngs={"dropout": jax.random.key(seed)},
    )[0]
    np.testing.assert_array_equal(run(1), run(1))
    assert not np.allclose(run(1), run(2))
    np.testing.assert_array_equal(head.apply(variables, features()), head.apply(variables, features()))


def test_dropout_list_and_errors():
    assert head_dropouts(0.5, 2) == [0.25, 0.5]
    assert head_dropouts(0.4, 4) == [0.2, 0.2, 0.2, 0.4]
    assert head_dropouts([0.1, 0.2], 2) == [0.1, 0.2]
    with pytest.raises(PmlError, match="one dropout per linear layer"):
        head_dropouts([0.1, 0.2, 0.3], 2)
    with pytest.raises(PmlError, match="nf=32"):
        create_head(32, 5).init(jax.random.key(0), jnp.zeros((1, 2, 2, 16)))


@pytest.fixture(scope="module")
def model18():
    return create_model("resnet18", 3, seed=0, lin_ftrs=[16])


def test_create_model_builds_body_plus_head(model18):
    module, variables = model18
    assert isinstance(module, Classifier)
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"body", "head"} == set(variables["batch_stats"])
    assert "fc" not in variables["params"]["body"] and "layer4" in variables["params"]["body"]
    assert set(variables["params"]["head"]) == {"bn0", "linear0", "bn1", "linear1"}
    assert variables["params"]["head"]["linear1"]["kernel"].shape == (16, 3)
    x = rule.images(0, (2, 64, 48, 3))

    @jax.jit
    def run(v, x, key):
        logits = module.apply(v, x)
        fmap = module.body.apply({col: v[col]["body"] for col in v}, x)  # the body alone: its feature map
        return logits, fmap, module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})

    logits, fmap, (train_logits, updates) = run(variables, x, jax.random.key(0))
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    assert fmap.shape == (2, 2, 2, 512)
    assert train_logits.shape == (2, 3) and not np.allclose(train_logits, logits)
    assert jax.tree_util.tree_structure(updates["batch_stats"]) == jax.tree_util.tree_structure(
        variables["batch_stats"]
    )
    assert not np.allclose(
        updates["batch_stats"]["head"]["bn0"]["mean"], variables["batch_stats"]["head"]["bn0"]["mean"]
    )


def test_create_model_rejects_unknown_arch():
    with pytest.raises(PmlError, match="unknown arch 'resnet51'.*resnet50"):
        create_model("resnet51", 3)


def test_linear_head_is_the_torchvision_classifier():
    """Classifier(body, LinearHead) computes what torchvision's ResNet with its own `fc` computes."""
    module, variables = create_model("resnet18", 5, seed=3, head="linear")
    assert isinstance(module.head, LinearHead)
    assert set(variables["params"]["head"]) == {"fc"} and variables["batch_stats"]["head"] == {}
    full = resnet("resnet18", num_classes=5)
    full_vars = {"params": {**variables["params"]["body"], "fc": variables["params"]["head"]["fc"]},
                 "batch_stats": variables["batch_stats"]["body"]}
    x = rule.images(1, (2, 64, 64, 3))
    np.testing.assert_allclose(module.apply(variables, x), full.apply(full_vars, x), rtol=1e-5, atol=1e-5)
    logits, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 5)
    assert jax.tree_util.tree_structure(updates) == jax.tree_util.tree_structure(
        {"batch_stats": variables["batch_stats"]})  # the train step's state keeps its structure


def test_linear_head_init_is_torch_linear_default():
    """weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch.nn.Linear(512, n) draws them."""
    _, variables = create_model("resnet18", 200, seed=0, head="linear")
    fc = variables["params"]["head"]["fc"]
    bound = 1 / math.sqrt(512)
    assert fc["kernel"].shape == (512, 200) and fc["bias"].shape == (200,)
    for leaf in (fc["kernel"], fc["bias"]):
        assert float(jnp.abs(leaf).max()) <= bound
    assert abs(float(fc["kernel"].std()) - bound / math.sqrt(3)) < 0.02 * bound


def test_create_model_refuses_unknown_heads_and_options_for_the_linear_head():
    with pytest.raises(PmlError, match="head='mlp'"):
        create_model("resnet18", 3, head="mlp")
    with pytest.raises(PmlError, match="linear head takes no options"):
        create_model("resnet18", 3, head="linear", ps=0.1)
