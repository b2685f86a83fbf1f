"""The embedded synthetic set: deterministic, labels match the drawn shapes, cached, varied."""

import io
import itertools

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pml_jax.data import synthetic as synth
from pml_jax.data.synthetic import SHAPES, SyntheticParams, render, shape_mask, synthetic
from pml_jax.errors import PmlError
from pml_jax.paths import cache_dir

SMALL = dict(n_images=40, seed=3)


def test_same_seed_gives_same_bytes_and_labels(tmp_path):
    a = synthetic(tmp_path / "a", **SMALL)
    b = synthetic(tmp_path / "b", **SMALL)
    pd.testing.assert_frame_equal(a.df, b.df)
    for f in a.df["fname"]:
        assert (a.root / f).read_bytes() == (b.root / f).read_bytes()
    other = synthetic(tmp_path / "c", n_images=40, seed=4)
    assert not other.df["labels"].equals(a.df["labels"])
    assert (other.root / "00000.jpg").read_bytes() != (a.root / "00000.jpg").read_bytes()


def test_csv_labels_are_the_drawn_shapes_and_visible(tmp_path):
    params = SyntheticParams(**SMALL)
    items = synthetic(tmp_path / "s", **SMALL)
    assert items.vocab == tuple(sorted({t for s in items.df["labels"] for t in s.split()}))
    assert set(items.vocab) <= set(SHAPES)
    for i, row in items.df.iterrows():
        data, shapes = render(i, params)
        assert (items.root / row["fname"]).read_bytes() == data
        assert row["labels"] == " ".join(dict.fromkeys(s.name for s in shapes))
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
        for s in shapes:
            x0, y0, x1, y1 = s.box
            assert 0 <= x0 < x1 <= pixels.shape[1] and 0 <= y0 < y1 <= pixels.shape[0]
            inside = np.asarray(shape_mask(s.name, x1 - x0, s.angle)) > 250
            drawn = pixels[y0:y1, x0:x1][inside].mean(0)
            np.testing.assert_allclose(drawn, s.colour, atol=25)  # JPEG noise only
        boxes = [s.box for s in shapes]
        for a, b in itertools.combinations(boxes, 2):  # one shape per grid cell: no overlap
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_shapes_are_distinct_masks():
    masks = {n: np.asarray(shape_mask(n, 64, 30.0)) > 127 for n in SHAPES}
    assert len(SHAPES) >= 8
    for a, b in itertools.combinations(SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.75, (a, b, iou)
    assert masks["circle"].mean() == pytest.approx(np.pi / 4 * (62 / 64) ** 2, abs=0.03)
    assert not masks["ring"][32, 32] and masks["circle"][32, 32]
    with pytest.raises(PmlError, match="hexagram"):
        shape_mask("hexagram", 10, 0.0)


def test_sizes_aspects_counts_and_split_vary():
    params = SyntheticParams(n_images=200, seed=0)
    sizes, counts, colours = [], [], {n: [] for n in SHAPES}
    for i in range(params.n_images):
        data, shapes = render(i, params)
        sizes.append(Image.open(io.BytesIO(data)).size)
        counts.append(len(shapes))
        for s in shapes:
            colours[s.name].append(s.colour)
    w, h = np.array(sizes).T
    assert w.min() >= 96 and h.min() >= 96 and w.max() <= 200 and h.max() <= 200
    assert (w / h).min() < 0.8 and (w / h).max() > 1.25 and (w / h).min() >= 0.74 and (w / h).max() <= 1.35
    assert set(counts) == {0, 1, 2, 3, 4}
    for name, cs in colours.items():  # colour does not give the class away
        assert len(cs) > 20 and np.std(cs, axis=0).min() > 40, name


def test_cached_once_and_reused(monkeypatch):
    items = synthetic(n_images=25, seed=9)
    key = SyntheticParams(n_images=25, seed=9).key()
    assert items.root == cache_dir("synthetic") / key / "train"
    assert items.df["is_valid"].sum() == int(0.2 * 25)

    def boom(*args):
        raise AssertionError("regenerated")

    monkeypatch.setattr(synth, "write_set", boom)
    again = synthetic(n_images=25, seed=9)
    pd.testing.assert_frame_equal(again.df, items.df)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def flaky(index, params):
        calls.append(index)
        if index == 5:
            raise KeyboardInterrupt
        return real(index, params)

    real = synth.render
    monkeypatch.setattr(synth, "render", flaky)
    with pytest.raises(KeyboardInterrupt):
        synthetic(tmp_path / "set", n_images=10)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "render", real)
    assert len(synthetic(tmp_path / "set", n_images=10).df) == 10


def test_a_folder_with_other_params_or_content_is_refused(tmp_path):
    synthetic(tmp_path / "s", n_images=5)
    with pytest.raises(PmlError, match="different dataset"):
        synthetic(tmp_path / "s", n_images=6)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(PmlError, match="not a synthetic dataset"):
        synthetic(tmp_path / "junk", n_images=5)
    with pytest.raises(PmlError, match="invalid synthetic parameters"):
        synthetic(tmp_path / "t", n_images=5, max_objects=5)
