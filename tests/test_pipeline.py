"""The tf.data pipeline: batches, masks, order, determinism, sharding, decoding, errors, show_batch."""

import dataclasses
import io
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pml_jax.data import pipeline
from pml_jax.data.batch_plan import eval_steps, train_steps
from pml_jax.data.decode import decode
from pml_jax.data.header_sizes import HeaderSizes
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.loaders import DataLoaders
from pml_jax.data.show_batch import batch_titles, show_batch
from pml_jax.errors import PmlError

VOCAB = ("cat", "dog", "horse")
LABELS = ["cat", "dog horse", "", "horse", "cat dog"]


def colour_of(i):
    """Item i's solid colour; a solid image keeps it exactly through any crop and resize."""
    return np.array([3 + 9 * i, 100, 200], np.uint8)


def ids_of(images):
    return np.round((images[:, 0, 0, 0].astype(int) - 3) / 9).astype(int)  # JPEG may move it by 1-2


def make_items(root, n_train, n_valid, image_fn=None, name="tiny"):
    """Items 0..n_train-1 are train, the rest valid; item i has colour_of(i) unless image_fn given."""
    rows = []
    for i in range(n_train + n_valid):
        h, w = 20 + (i * 7) % 23, 20 + (i * 11) % 29
        img = image_fn(i) if image_fn else np.broadcast_to(colour_of(i), (h, w, 3))
        fname = f"img{i}.png" if i % 2 else f"img{i}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).save(root / fname, quality=95)
        rows.append((fname, LABELS[i % len(LABELS)], i >= n_train))
    return LabelledImages(pd.DataFrame(rows, columns=["fname", "labels", "is_valid"]), root, VOCAB,
                          name=name)


def noise_image(i):
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (40 + 3 * i, 60 - 2 * i, 3), np.uint8)


@pytest.fixture
def solid(tmp_path):
    return make_items(tmp_path, n_train=13, n_valid=7)


@pytest.fixture
def noisy(tmp_path):
    return make_items(tmp_path, n_train=6, n_valid=3, image_fn=noise_image)


def collect(batches):
    return {k: np.stack([b[k] for b in batches]) for k in ("image", "target", "mask")}


def test_eval_batches_keep_every_item_once_in_order_with_mask(solid):
    assert eval_steps(solid, 3) == 3
    batches = list(pipeline.eval_batches(solid, 16, 3))
    assert len(batches) == 3
    for b in batches:
        assert b["image"].shape == (3, 16, 16, 3) and b["image"].dtype == np.uint8
        assert b["target"].shape == (3, 3) and b["target"].dtype == np.float32
        assert b["mask"].dtype == bool
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * 7 + [False] * 2)
    images = np.concatenate([b["image"] for b in batches])
    np.testing.assert_array_equal(ids_of(images[mask]), np.arange(13, 20))
    assert (images[~mask] == 0).all()
    targets = np.concatenate([b["target"] for b in batches])
    np.testing.assert_array_equal(targets[mask], solid.targets(True))
    assert (targets[~mask] == 0).all()


def test_eval_images_are_pil_squish_then_centre_crop(tmp_path):
    items = make_items(tmp_path, 1, 2, image_fn=lambda i: noise_image(i).repeat(5, 0).repeat(4, 1))
    (batch,) = pipeline.eval_batches(items, 128, 2)
    for img, fname in zip(batch["image"], items.subset(True)["fname"]):
        big = Image.open(tmp_path / fname).convert("RGB").resize((152, 152), Image.BILINEAR)
        np.testing.assert_array_equal(img, np.asarray(big)[12:140, 12:140])


def test_train_epoch_drops_remainder_and_sees_items_once(solid):
    assert train_steps(solid, 4) == 3
    b = collect(list(pipeline.train_batches(solid, 24, 4, seed=0, epoch=0)))
    assert b["image"].shape == (3, 4, 24, 24, 3) and b["mask"].all()
    ids = ids_of(b["image"].reshape(-1, 24, 24, 3))
    assert len(set(ids)) == 12 and set(ids) <= set(range(13))
    np.testing.assert_array_equal(b["target"].reshape(-1, 3), solid.targets(False)[ids])


def test_train_order_is_seeded_per_epoch_and_resumable(solid):
    def order(seed, epoch, **kw):
        batches = pipeline.train_batches(solid, 8, 4, seed, epoch, **kw)
        return ids_of(np.concatenate([b["image"] for b in batches]))

    e1 = order(0, 1)
    np.testing.assert_array_equal(order(0, 1), e1)
    assert not np.array_equal(order(0, 0), e1)
    assert not np.array_equal(order(1, 1), e1)
    np.testing.assert_array_equal(order(0, 1, start_step=2), e1[8:])


@pytest.mark.parametrize("fast_decode", [False, True])
def test_train_crops_are_reproducible_and_change_with_epoch(noisy, fast_decode):
    def epoch(e, **kw):
        return collect(list(pipeline.train_batches(noisy, 8, 2, 7, e, fast_decode=fast_decode,
                                                   **kw)))["image"]

    a = epoch(3)
    np.testing.assert_array_equal(epoch(3), a)
    np.testing.assert_array_equal(epoch(3, deterministic=False).sum(), a.sum())  # same items, maybe reordered
    assert not np.array_equal(epoch(4), a)


@pytest.mark.parametrize("augment", ["host", "device"])
def test_flip_mirrors_left_right(tmp_path, augment):
    """One train image over 8 epochs: with flip each crop is the unflipped one or its mirror, both seen."""
    items = make_items(tmp_path, 1, 1, image_fn=noise_image)

    def crops(flip):
        dls = DataLoaders(items, size=16, batch_size=1, seed=0, flip=flip, cache="none", augment=augment)
        return [dls.finish(next(iter(dls.train(e))))["image"][0] for e in range(8)]

    mirrored = [not np.array_equal(f, a) for f, a in zip(crops(True), crops(False))]
    for f, a, m in zip(crops(True), crops(False), mirrored):
        np.testing.assert_array_equal(f, a[:, ::-1] if m else a)
    assert 0 < sum(mirrored) < 8


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_two_processes_split_every_global_batch(solid, kind):
    def run(p, count):
        if kind == "train":
            return list(pipeline.train_batches(solid, 8, 4, 5, 2, process_index=p, process_count=count))
        return list(pipeline.eval_batches(solid, 8, 4, process_index=p, process_count=count))

    whole = run(0, 1)
    shards = [run(0, 2), run(1, 2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == (3 if kind == "train" else 2)
    for step, glob in enumerate(whole):
        for key in glob:
            assert shards[0][step][key].shape[0] == 2
            np.testing.assert_array_equal(
                np.concatenate([shards[0][step][key], shards[1][step][key]]), glob[key])
    if kind == "eval":
        seen = np.concatenate([ids_of(b["image"][b["mask"]]) for s in shards for b in s])
        np.testing.assert_array_equal(np.sort(seen), np.arange(13, 20))


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _smooth(h=37, w=53):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 4, yy * 6, (xx + yy) * 2], -1).astype(np.uint8)


def _sixteen_bit_png(channels):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.integers(0, 65536, (37, 53, channels)).astype(np.uint16)
    return tf.io.encode_png(x).numpy(), np.repeat(x >> 8, 3 // channels, -1).astype(np.uint8)


def _cases():
    rgb = Image.fromarray(_smooth())
    alpha = Image.fromarray(np.arange(37 * 53, dtype=np.uint8).reshape(37, 53))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    pal = rgb.convert("P")
    pal.info["transparency"] = 3
    return {
        "gray jpeg": _encode(rgb.convert("L"), "JPEG"),
        "rgb jpeg": _encode(rgb, "JPEG", quality=90),
        "cmyk jpeg": _encode(rgb.convert("CMYK"), "JPEG"),
        "progressive jpeg": _encode(rgb, "JPEG", progressive=True),
        "rgba png": _encode(rgba, "PNG"),
        "gray+alpha png": _encode(Image.merge("LA", [rgb.convert("L"), alpha]), "PNG"),
        "palette png": _encode(pal, "PNG", transparency=3),
        "gif": _encode(pal, "GIF"),
        "bmp": _encode(rgb, "BMP"),
        "webp": _encode(rgb, "WEBP", lossless=True),
        "tiff (PIL fallback)": _encode(rgb, "TIFF"),
        "cmyk tiff (PIL fallback)": _encode(rgb.convert("CMYK"), "TIFF"),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_decode_matches_pil_rgb(name):
    data = _cases()[name]
    want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    got = decode(data).numpy()
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("channels", [1, 3])
def test_decode_sixteen_bit_png_keeps_high_byte(channels):
    """PIL saturates 16-bit grayscale when converting to RGB (I;16 -> L clips); we scale instead."""
    data, want = _sixteen_bit_png(channels)
    np.testing.assert_array_equal(decode(data).numpy(), want)


@pytest.mark.parametrize("damage", ["not an image", "truncated jpeg", "missing"])
def test_unreadable_image_names_the_file(tmp_path, damage):
    items = make_items(tmp_path, 4, 5)
    bad = tmp_path / items.subset(True)["fname"][3]
    if damage == "not an image":
        bad.write_text("hello")
    elif damage == "truncated jpeg":
        bad = bad.with_suffix(".jpg")
        items.df.loc[items.df["fname"] == items.subset(True)["fname"][3], "fname"] = bad.name
        data = _encode(Image.fromarray(_smooth()), "JPEG")
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.unlink()
    with pytest.raises(PmlError, match=bad.name):
        list(pipeline.eval_batches(items, 8, 2))


def test_unreadable_train_headers_are_all_named_before_any_batch(tmp_path):
    items = make_items(tmp_path, 6, 1)
    missing, garbage = (tmp_path / f for f in items.subset(False)["fname"][[1, 4]])
    missing.unlink()
    garbage.write_text("hello")
    with pytest.raises(PmlError, match="cannot read 2 image") as err:
        pipeline.train_batches(items, 8, 2, 0, 0, process_index=0, process_count=1)
    assert missing.name in str(err.value) and garbage.name in str(err.value)


def test_image_sizes_follow_file_changes(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(path)
    headers = HeaderSizes()
    assert headers.of_file(str(path)) == (20, 30)
    Image.fromarray(np.zeros((41, 17, 3), np.uint8)).save(path)
    assert headers.of_file(str(path)) == (41, 17)


def test_reader_source_gives_the_same_batches_as_files(tmp_path, solid):
    def reader(is_valid):
        import tensorflow as tf

        data = [p.read_bytes() for p in map(lambda f: tmp_path / f, solid.subset(is_valid)["fname"])]
        return tf.data.Dataset.from_tensor_slices((data, solid.targets(is_valid)))

    from_reader = LabelledImages(solid.df, None, VOCAB, name="tfds", reader=reader)
    for a, b in zip(pipeline.eval_batches(from_reader, 8, 4), pipeline.eval_batches(solid, 8, 4)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for a, b in zip(pipeline.train_batches(from_reader, 8, 4, 0, 0),
                    pipeline.train_batches(solid, 8, 4, 0, 0)):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_bad_settings_raise_pml_error(solid):
    with pytest.raises(PmlError, match="multiple of the process count"):
        pipeline.eval_batches(solid, 8, 5, process_index=0, process_count=2)
    with pytest.raises(PmlError, match="fewer than one batch"):
        pipeline.train_batches(solid, 8, 16, 0, 0, process_index=0, process_count=1)
    with pytest.raises(PmlError, match="process index"):
        pipeline.train_batches(solid, 8, 4, 0, 0, process_index=2, process_count=2)


def test_importing_the_data_package_does_not_import_tensorflow():
    """Every module of pml_jax.data (pipeline, its parts, transforms, loaders, show_batch, sources)
    imports TensorFlow only when a pipeline is built."""
    code = ("import importlib, pkgutil, sys, pml_jax.data as d\n"
            "names = [m.name for m in pkgutil.iter_modules(d.__path__)]\n"
            "[importlib.import_module('pml_jax.data.' + n) for n in names]\n"
            "print(len(names), 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, imported = out.stdout.split()
    assert int(count) >= 20 and imported == "False"


def test_batch_titles_join_labels_like_fastai():
    t = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.float32)
    assert batch_titles(t, VOCAB) == ["cat;horse", "(none)", "dog"]


def test_show_batch_writes_a_grid_png(tmp_path, solid):
    dls = DataLoaders(solid, size=32, batch_size=4, seed=0)
    path = show_batch(dls, tmp_path / "out" / "show_batch.png", nrows=2, ncols=3)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (2 * 3 * 100, 3 * 3 * 100, 3)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 6  # images and titles were drawn
    batch = {"image": np.zeros((4, 8, 8, 3), np.uint8), "target": np.eye(4, 3, dtype=np.float32),
             "mask": np.array([True, True, False, True])}
    assert show_batch(batch, tmp_path / "b.png", VOCAB, 1, 3).exists()
    with pytest.raises(PmlError, match="vocab"):
        show_batch(batch, tmp_path / "c.png")


def drawn_by_show_batch(dls, tmp_path, monkeypatch):
    """The images show_batch(dls) puts in its 2 x 2 grid."""
    from pml_jax.data import show_batch as module

    drawn = {}
    monkeypatch.setattr(module, "plot_image_grid", lambda images, *a, **k: drawn.setdefault("images", images))
    show_batch(dls, tmp_path / "grid.png", nrows=2, ncols=2)
    return drawn["images"]


def first_train_images(dls):
    return dls.finish(next(iter(dls.train(0))))["image"]


@pytest.fixture
def large(tmp_path):
    """JPEGs large enough that a 32 px crop decodes at a reduced scale with fast_decode."""
    from pml_jax.data.synthetic import synthetic

    return synthetic(root=tmp_path / "set", n_images=24, min_side=200, max_side=260)


@pytest.mark.parametrize("settings,change", [
    ({"fast_decode": False, "cache": "none", "augment": "host"}, {"fast_decode": True}),
    ({"fast_decode": True, "cache": "none", "augment": "host"}, {"fast_decode": False}),
    ({"augment": "device"}, {"augment": "host"}),
])
def test_show_batch_shows_the_training_pixels_of_its_loaders(tmp_path, monkeypatch, large, settings, change):
    """show_batch draws the crops its loaders train on: exact or fast decoding, resized on the
    device or on the host."""
    drawn = drawn_by_show_batch(DataLoaders(large, size=32, batch_size=8, seed=3, **settings), tmp_path,
                                monkeypatch)
    other = DataLoaders(large, size=32, batch_size=4, seed=3, **{**settings, **change})
    same = DataLoaders(large, size=32, batch_size=4, seed=3, **settings)
    np.testing.assert_array_equal(drawn, first_train_images(same))
    assert not np.array_equal(drawn, first_train_images(other))


def test_show_batch_of_the_fastbook_preset_draws_the_exact_decode(tmp_path, monkeypatch, large):
    """The fastbook preset's loaders (here without a cache, Pillow resizing on the host) show
    fastai's pixels: the crops cut from full decodes (the cache's path), not the reduced-scale
    JPEG decode."""
    from pml_jax.config import preset
    from pml_jax.workflow import data_loaders

    cfg = preset("fastbook", size=32, batch_size=4, cache="none", augment="host")
    dls = data_loaders(cfg, large, log=lambda line: None)
    drawn = drawn_by_show_batch(dls, tmp_path, monkeypatch)
    from_full_decodes = DataLoaders(large, size=32, batch_size=4, seed=cfg.seed, min_scale=cfg.min_scale,
                                    flip=cfg.flip, cache="ram", augment="host")
    np.testing.assert_array_equal(drawn, first_train_images(from_full_decodes))
    fast = dataclasses.replace(dls, fast_decode=True)
    assert not np.array_equal(drawn, first_train_images(fast))
