"""Bad-input checks: every bad file collected, skip_bad drops them, table problems named."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pml_jax.data.checks import SHOWN, check_images, check_table, image_problem
from pml_jax.data.dataset import LabelledImages, vocab_of
from pml_jax.errors import PmlError


def jpeg(seed=0, size=(40, 30)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_items(tmp_path, rows) -> LabelledImages:
    df = pd.DataFrame(rows, columns=["fname", "labels", "is_valid"])
    return LabelledImages(df, tmp_path, vocab_of(df["labels"]), name="t")


@pytest.fixture
def mixed(tmp_path):
    """4 good images and one of each kind of bad file."""
    good = {f"good{i}.jpg": jpeg(i) for i in range(4)}
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png, format="PNG")
    good["good.png"] = png.getvalue()
    full = jpeg(7, (120, 90))
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    bad = {
        "empty.jpg": b"",
        "truncated.jpg": full[: len(full) * 6 // 10],
        "text.jpg": b"this is not an image at all\n",
        "garbage.jpg": full[:200] + bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)),
        "picture.tif": tiff.getvalue(),
    }
    for name, data in {**good, **bad}.items():
        (tmp_path / name).write_bytes(data)
    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")  # 100 Mpx, a few KB on disk
    bad_names = [*bad, "bomb.png", "missing.jpg"]
    rows = [(f, "a", False) for f in good] + [(f, "a", i % 2 == 0) for i, f in enumerate(bad_names)]
    return make_items(tmp_path, rows), bad_names


def test_every_bad_file_is_reported_in_one_error(mixed):
    items, bad_names = mixed
    with pytest.raises(PmlError) as e:
        check_images(items)
    msg = str(e.value)
    assert f"{len(bad_names)} of " in msg and "--skip_bad true" in msg
    for name in bad_names:
        assert name in msg
    assert "good" not in msg


def test_reasons_name_the_kind_of_problem(mixed):
    items, _ = mixed
    root, limit = items.root, Image.MAX_IMAGE_PIXELS
    assert image_problem(root / "missing.jpg", limit) == "missing"
    assert image_problem(root / "empty.jpg", limit) == "empty file (0 bytes)"
    assert "truncated" in image_problem(root / "truncated.jpg", limit)
    assert "not an image" in image_problem(root / "text.jpg", limit)
    assert image_problem(root / "garbage.jpg", limit) is not None
    assert "TIFF" in image_problem(root / "picture.tif", limit)
    assert "10000x10000" in image_problem(root / "bomb.png", limit)
    assert image_problem(root / "bomb.png", 10**9) is None  # a higher limit lets it through
    assert image_problem(root / "good0.jpg", limit) is None and image_problem(root / "good.png", limit) is None


def test_skip_bad_drops_them_and_reports(mixed):
    items, bad_names = mixed
    kept, report = check_images(items, skip_bad=True, workers=2)
    assert sorted(kept.df["fname"]) == sorted(["good0.jpg", "good1.jpg", "good2.jpg", "good3.jpg", "good.png"])
    assert report.skipped and report.n_checked == len(items.df)
    assert sorted(f for f, _ in report.bad) == sorted(bad_names)
    assert f"skipped {len(bad_names)} bad" in report.summary()
    assert "the validation split is empty" in " ".join(report.warnings)


def test_clean_set_passes_untouched(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg(i))
    items = make_items(tmp_path, [("0.jpg", "a b", False), ("1.jpg", "a", False), ("2.jpg", "b", True)])
    out, report = check_images(items)
    assert out is items and report.bad == () and report.n_checked == 3 and report.warnings == ()


def test_long_error_lists_first_20_and_counts_the_rest(tmp_path):
    items = make_items(tmp_path, [(f"m{i:02d}.jpg", "a", i == 0) for i in range(SHOWN + 5)])
    with pytest.raises(PmlError, match=r"25 of 25 images[\s\S]*and 5 more") as e:
        check_images(items)
    assert "m19.jpg" in str(e.value) and "m20.jpg" not in str(e.value)


def test_table_errors_name_the_row_and_value(tmp_path):
    with pytest.raises(PmlError, match="no items"):
        check_table(make_items(tmp_path, []))
    with pytest.raises(PmlError, match="training split is empty"):
        check_table(make_items(tmp_path, [("a.jpg", "x", True)]))
    with pytest.raises(PmlError, match=r"row 2 \(c.jpg\).*'zebra'"):
        check_table(make_items(tmp_path, [("a.jpg", "x", False), ("b.jpg", "x", True), ("c.jpg", "x zebra", True)]))
    with pytest.raises(PmlError, match=r"both train and valid.*a.jpg"):
        check_table(make_items(tmp_path, [("a.jpg", "x", False), ("a.jpg", "x", True)]))


def test_table_warnings_for_repeats_and_empty_validation(tmp_path):
    notes = check_table(make_items(tmp_path, [("a.jpg", "x", False), ("a.jpg", "x", False)]))
    assert any("listed more than once" in n and "a.jpg" in n for n in notes)
    assert any("validation split is empty" in n for n in notes)


def test_missing_columns_name_the_columns(tmp_path):
    with pytest.raises(PmlError, match=r"missing column\(s\) \['is_valid'\]"):
        LabelledImages(pd.DataFrame({"fname": [], "labels": []}), tmp_path, (), name="x.csv")


def test_tfds_like_sets_get_table_checks_only():
    df = pd.DataFrame({"fname": ["a.jpg", "b.jpg"], "labels": ["x", "x"], "is_valid": [False, True]})
    items = LabelledImages(df, None, ("x",), reader=lambda is_valid: None)
    out, report = check_images(items)
    assert out is items and report.n_checked == 0


def test_files_only_mode_for_prediction_sets(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg(0))
    items = make_items(tmp_path, [("a.jpg", "", True), ("gone.jpg", "", True)])
    with pytest.raises(PmlError, match="training split is empty"):
        check_images(items)
    kept, report = check_images(items, skip_bad=True, tables=False)
    assert kept.df["fname"].tolist() == ["a.jpg"] and report.bad == (("gone.jpg", "missing"),)
