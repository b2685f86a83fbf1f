"""The decoded-image cache: the memory decision, batches identical with and without it, files read
once, and bad input named as before."""

import dataclasses
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from pml_jax.data import cache as cache_module
from pml_jax.data.cache import decide
from pml_jax.data.checks import check_images
from pml_jax.data.loaders import DataLoaders
from pml_jax.data.synthetic import synthetic
from pml_jax.errors import PmlError


@pytest.fixture
def items(tmp_path):
    return synthetic(root=tmp_path / "set", n_images=40, min_side=40, max_side=120)


def loaders(items, **kw):
    kw = {"fast_decode": False, "augment": "host", **kw}
    return DataLoaders(items, size=32, batch_size=8, seed=1, **kw)


def assert_same_batches(a, b):
    a, b = list(a), list(b)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_decide_keeps_what_fits_half_the_available_memory():
    assert decide("auto", 499, available=1000).use and not decide("auto", 501, available=1000).use
    assert decide("ram", 10**15, available=1).use and not decide("none", 1, available=10**15).use
    assert "would not fit" in decide("auto", 2 * 10**9, available=10**9).summary()
    assert "1.00 GB" in decide("ram", 10**9).summary() and "2.5 MB" in decide("ram", 2_500_000).summary()
    with pytest.raises(PmlError, match="cache='disk'"):
        decide("disk", 1)
    assert cache_module.available_memory() > 0


@pytest.mark.parametrize("augment", ["host", "device"])
def test_the_cache_never_changes_a_batch(items, augment):
    """Epochs 1 and 2 (decode + fill, then from RAM), a resumed epoch, two processes' slices and
    validation: the same arrays with the cache as without."""
    off, on = loaders(items, augment=augment, cache="none"), loaders(items, augment=augment, cache="ram")
    assert not off.cache_decision().use and on.cache_decision().use
    for epoch in (0, 1):
        assert_same_batches(on.train(epoch), off.train(epoch))
    assert_same_batches(on.train(2, start_step=2), off.train(2, start_step=2))
    for p in (0, 1):
        two = {"process_index": p, "process_count": 2}
        assert_same_batches(dataclasses.replace(on, **two).train(3), dataclasses.replace(off, **two).train(3))
    for _ in range(2):
        assert_same_batches(on.valid(), off.valid())
    assert on.store.decoded(False, 32).nbytes == on.cache_bytes() - 8 * 32 * 32 * 3  # train: all, once


def test_with_the_cache_fast_decode_gives_the_exact_crops(items):
    exact = loaders(items, cache="none", fast_decode=False)
    assert_same_batches(loaders(items, cache="ram", fast_decode=True).train(0), exact.train(0))


def test_auto_falls_back_to_none_when_the_budget_is_too_small(items, monkeypatch):
    monkeypatch.setattr(cache_module, "available_memory", lambda: 1000)
    small = loaders(items, cache="auto")
    decision = small.cache_decision()
    assert not decision.use and decision.budget == 500 and decision.need == small.cache_bytes() > 500
    assert "cache: none" in decision.summary()
    assert_same_batches(small.train(0), loaders(items, cache="ram").train(0))
    assert small.store.decoded(False, 32).nbytes == 0  # nothing was kept
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10**12)
    assert loaders(items, cache="auto").cache_decision().use


def test_later_epochs_and_validation_read_no_file(items, tmp_path):
    reference = loaders(items, cache="none", augment="device")
    want = [list(reference.train(1)), list(reference.valid())]
    on = loaders(items, cache="ram", augment="device")
    list(on.train(0)), list(on.valid())
    shutil.move(tmp_path / "set", tmp_path / "away")
    assert_same_batches(on.train(1), want[0])
    assert_same_batches(on.valid(), want[1])
    with pytest.raises(PmlError, match="cannot read"):
        list(reference.train(1))


def test_an_epoch_left_early_leaves_a_working_cache(items):
    on = loaders(items, cache="ram")
    first = next(iter(on.train(0)))  # as show_batch does: the rest of the epoch is never asked for
    batches = list(on.train(0))
    assert_same_batches(batches[:1], [first])
    assert_same_batches(batches, loaders(items, cache="none").train(0))


def _truncated(items, index=3):
    """Cut the JPEG of train item `index` in half: its header still reads, its pixels do not."""
    path = items.root / items.subset(False)["fname"][index]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("augment", ["host", "device"])
def test_a_corrupt_image_found_while_filling_the_cache_is_named(items, augment):
    bad = _truncated(items)
    with pytest.raises(PmlError, match=f"{bad.name}: cannot read image"):
        list(loaders(items, cache="ram", augment=augment).train(0))


def test_skip_bad_drops_and_lists_the_image_and_the_cache_trains_on_the_rest(items):
    bad = _truncated(items)
    kept, report = check_images(items, skip_bad=True)
    assert bad.name in report.summary() and bad.name not in set(kept.df["fname"])
    dls = loaders(kept, cache="ram", augment="device")
    assert len(list(dls.train(0))) == dls.steps_per_epoch


def test_reader_sources_are_cached_too(items):
    """A tfds-like reader (encoded bytes in memory): same batches, decoded once."""
    def reader(is_valid):
        import tensorflow as tf

        data = [(items.root / f).read_bytes() for f in items.subset(is_valid)["fname"]]
        return tf.data.Dataset.from_tensor_slices((data, items.targets(is_valid)))

    from_reader = dataclasses.replace(items, root=None, reader=reader)
    assert_same_batches(loaders(from_reader, cache="ram", augment="device").train(0),
                        loaders(items, cache="none", augment="device").train(0))


def test_a_png_with_alpha_decodes_like_the_per_epoch_path(tmp_path, items):
    """Non-JPEG formats go through the same decoder (alpha dropped) with and without the cache."""
    for f in items.subset(False)["fname"][:4]:
        with Image.open(items.root / f) as im:
            rgba = im.convert("RGBA")
        buf = io.BytesIO()
        rgba.save(buf, "PNG")
        (items.root / f).write_bytes(buf.getvalue())  # PNG bytes under the .jpg name
    assert_same_batches(loaders(items, cache="ram").train(0), loaders(items, cache="none").train(0))


def test_a_run_passes_the_flags_and_logs_the_decision(items):
    from pml_jax.config import Config
    from pml_jax.workflow import data_loaders

    lines = []
    dls = data_loaders(Config(size=32, batch_size=8, cache="ram", augment="device"), items, lines.append)
    assert (dls.cache, dls.augment_on) == ("ram", "device")
    mb = dls.cache_bytes() / 1e6
    assert lines == [f"cache: ram (--cache ram), {mb:.1f} MB of decoded images; train crops resized on the device"]
    assert DataLoaders(items, 32, 8).augment_on == "host"  # auto on this CPU backend
    with pytest.raises(PmlError, match="cache='disk'"):
        Config(cache="disk")
    with pytest.raises(PmlError, match="augment='gpu'"):
        DataLoaders(items, 32, 8, augment="gpu")
