"""predict_batches: the one inference loop (validation, evaluate, predict) and Learner.get_preds on it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tiny import tiny_dls, tiny_model

from pml_jax.data.normalize import normalize
from pml_jax.errors import PmlError
from pml_jax.train import learner as learner_module
from pml_jax.train.inference import predict_batches
from pml_jax.train.learner import Learner


def padded_batches(images, targets, batch: int):
    """Host batches of `batch` rows over `images`/`targets`, the last one padded with garbage rows."""
    out = []
    for start in range(0, len(images), batch):
        img, tgt = images[start:start + batch], targets[start:start + batch]
        pad = batch - len(img)
        out.append({"image": np.concatenate([img, np.full((pad, *img.shape[1:]), 255, np.uint8)]),
                    "target": np.concatenate([tgt, np.ones((pad, tgt.shape[1]), np.float32)]),
                    "mask": np.arange(batch) < len(img)})
    return out


def test_predict_batches_are_the_models_outputs_in_order_with_padding_masked():
    model, variables = tiny_model(3)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    targets = (rng.random((11, 3)) < 0.5).astype(np.float32)
    batches = padded_batches(images, targets, 4)
    with jax.transfer_guard_device_to_host("disallow"):  # the loop never waits on a host round-trip
        probs, targs, mask, loss = predict_batches(model, variables, batches)
    assert probs.shape == targs.shape == (12, 3) and mask.shape == loss.shape == (12,)
    np.testing.assert_array_equal(mask, np.arange(12) < 11)
    logits = model.apply(variables, normalize(jnp.asarray(images)), train=False)
    np.testing.assert_allclose(probs[:11], jax.nn.sigmoid(logits), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(targs[:11], targets)
    np.testing.assert_allclose(loss[:11], optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1),
                               rtol=1e-5, atol=1e-6)


def test_predict_batches_without_batches_is_one_error():
    model, variables = tiny_model(3)
    with pytest.raises(PmlError, match="nothing to predict on"):
        predict_batches(model, variables, iter([]))


def test_learner_get_preds_are_predict_batches_over_the_validation_split(tmp_path):
    dls = tiny_dls(tmp_path)
    model, variables = tiny_model(len(dls.vocab))
    learn = Learner(model, variables, dls, progress=False, log=lambda _: None)
    got = learn.get_preds()
    want = predict_batches(model, variables, dls.valid())
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    probs, _, mask, _ = got
    assert int(mask.sum()) == len(dls.items.subset(True)) and probs.shape[1] == len(dls.vocab)
    row = learn.validate()
    assert row["valid_loss"] == pytest.approx(float(got[3][np.asarray(mask)].mean()), rel=1e-6)


def test_get_preds_after_a_fit_are_its_last_validation_and_new_params_are_predicted_again(tmp_path, monkeypatch):
    dls = tiny_dls(tmp_path)
    model, variables = tiny_model(len(dls.vocab))
    learn = Learner(model, variables, dls, progress=False, log=lambda _: None)
    passes = []
    monkeypatch.setattr(learner_module, "predict_batches", lambda *a, **k: passes.append(1) or predict_batches(*a, **k))
    learn.fit_one_cycle(1, 1e-2)
    assert len(passes) == 1  # the epoch's validation
    preds = learn.get_preds()
    assert learn.get_preds() is preds and len(passes) == 1  # the same params, stats and loaders: no new pass
    want = predict_batches(model, {"params": learn.params, "batch_stats": learn.batch_stats}, dls.valid())
    for a, b in zip(preds, want):
        np.testing.assert_array_equal(a, b)
    learn.dls = dataclasses.replace(dls)
    assert learn.get_preds() is not preds and len(passes) == 2
    learn.params = jax.tree.map(lambda x: x * 0.5, learn.params)
    assert not np.allclose(learn.get_preds()[0], want[0]) and len(passes) == 3
