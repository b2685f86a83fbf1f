"""Param groups, freeze mask, wd mask and lr_range against fastai 2.8 (fixtures/fastai)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from pml_jax.errors import PmlError
from pml_jax.models import create_model
from pml_jax.train.groups import (
    decay_mask,
    lr_range,
    merge_trainable,
    param_groups,
    split_trainable,
    trainable_mask,
)

REF = pathlib.Path(__file__).parent / "fixtures" / "fastai"
TORCH_BODY = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
TORCH_HEAD = {"2": "bn0", "4": "linear0", "6": "bn1", "8": "linear1"}


def torch_to_path(name: str, flat_params: dict) -> tuple[str, ...]:
    """fastai resnet param name ('0.4.0.bn1.weight', '1.4.weight') -> our param path."""
    part, idx, *rest = name.split(".")
    module = ("body", TORCH_BODY[idx]) if part == "0" else ("head", TORCH_HEAD[idx])
    module += tuple(rest[:-1])
    if rest[-1] == "bias":
        return module + ("bias",)
    return module + (("scale",) if module + ("scale",) in flat_params else ("kernel",))


@pytest.fixture(scope="module")
def resnet18():
    variables = jax.eval_shape(lambda: create_model("resnet18", 20)[1])
    return variables["params"], variables["batch_stats"]


@pytest.fixture(scope="module")
def fastai_resnet18(resnet18):
    """fastai's labels keyed by our param path; asserts the name mapping is a bijection."""
    ref = json.loads((REF / "resnet18_freeze.json").read_text())
    flat = traverse_util.flatten_dict(resnet18[0])
    by_path = {torch_to_path(n, flat): v for n, v in ref.items()}
    assert set(by_path) == set(flat)
    for path, v in by_path.items():  # same tensors: sizes agree
        assert int(np.prod(v["shape"])) == int(np.prod(flat[path].shape)), path
    return by_path


def flat_of(tree):
    return traverse_util.flatten_dict(tree)


def test_param_groups_match_fastai_resnet_split(resnet18, fastai_resnet18):
    groups = flat_of(param_groups(resnet18[0]))
    assert {p: fastai_resnet18[p]["group"] for p in groups} == groups
    assert set(groups.values()) == {0, 1, 2}


def test_frozen_trainable_mask_matches_fastai_freeze(resnet18, fastai_resnet18):
    mask = flat_of(trainable_mask(*resnet18, frozen=True))
    assert mask == {p: fastai_resnet18[p]["trainable_frozen"] for p in mask}
    # sanity on the reference itself: frozen body convs, trainable body BNs, whole head
    assert not mask[("body", "layer3", "1", "conv2", "kernel")]
    assert mask[("body", "layer2", "0", "downsample", "1", "bias")]
    assert mask[("head", "linear1", "kernel")]


def test_unfrozen_mask_is_all_true(resnet18):
    assert all(jax.tree.leaves(trainable_mask(*resnet18, frozen=False)))


def test_decay_mask_matches_fastai_wd_bn_bias_false(resnet18, fastai_resnet18):
    mask = flat_of(decay_mask(*resnet18))
    assert mask == {p: fastai_resnet18[p]["do_wd"] for p in mask}
    assert not mask[("head", "bn0", "scale")] and mask[("body", "conv1", "kernel")]


def test_batchnorm_found_by_batch_stats_not_by_name():
    params = {
        "body": {"conv1": {"kernel": 1}, "layer1": {"norm": {"scale": 1, "bias": 1}, "x": {"kernel": 1, "bias": 1}}},
        "head": {"bn0": {"scale": 1, "bias": 1}, "dense": {"kernel": 1}},
    }
    stats = {"body": {"layer1": {"norm": {"mean": 0, "var": 1}}}, "head": {"bn0": {"mean": 0, "var": 1}}}
    assert flat_of(decay_mask(params, stats)) == {
        ("body", "conv1", "kernel"): True, ("body", "layer1", "norm", "scale"): False,
        ("body", "layer1", "norm", "bias"): False, ("body", "layer1", "x", "kernel"): True,
        ("body", "layer1", "x", "bias"): False, ("head", "bn0", "scale"): False,
        ("head", "bn0", "bias"): False, ("head", "dense", "kernel"): True,
    }
    frozen = flat_of(trainable_mask(params, stats, frozen=True))
    assert {p for p, m in frozen.items() if m} == {
        ("body", "layer1", "norm", "scale"), ("body", "layer1", "norm", "bias"),
        ("head", "bn0", "scale"), ("head", "bn0", "bias"), ("head", "dense", "kernel"),
    }


def test_unknown_body_module_is_an_error():
    with pytest.raises(PmlError, match="body/fc/kernel"):
        param_groups({"body": {"fc": {"kernel": 1}}, "head": {}})


def test_split_and_merge_trainable_round_trip(resnet18):
    params = jax.tree.map(lambda s: jnp.ones(s.shape[:1]), resnet18[0])
    mask = trainable_mask(params, resnet18[1], frozen=True)
    trainable, frozen = split_trainable(params, mask)
    n_train = sum(jax.tree.leaves(mask))
    assert len(jax.tree.leaves(trainable)) == n_train
    assert len(jax.tree.leaves(frozen)) == len(jax.tree.leaves(params)) - n_train
    merged = merge_trainable(trainable, frozen)
    assert jax.tree.structure(merged) == jax.tree.structure(params)


@pytest.mark.parametrize(
    "lr, expected",
    [
        (slice(3e-3), [3e-4, 3e-4, 3e-3]),
        (slice(1e-5, 1e-3), [1e-5, 1e-4, 1e-3]),
        (slice(0, 1e-3), [1e-4, 1e-4, 1e-3]),  # fastai tests the start's truthiness
        (2e-3, [2e-3] * 3),
        ([1e-3, 2e-3, 5e-3], [1e-3, 2e-3, 5e-3]),
    ],
)
def test_lr_range(lr, expected):
    np.testing.assert_allclose(lr_range(lr), expected, rtol=1e-15)


def test_lr_range_is_fastai_even_mults_bitwise():
    lo, hi = 1.5e-3 / 100, 1.5e-3
    step = (hi / lo) ** (1 / 2)
    assert lr_range(slice(lo, hi)).tolist() == [lo, lo * step, lo * step**2]


@pytest.mark.parametrize("bad", [[1e-3, 2e-3], "fast", slice(1e-3, None), [[1e-3]]])
def test_lr_range_rejects_bad_values(bad):
    with pytest.raises(PmlError):
        lr_range(bad)
