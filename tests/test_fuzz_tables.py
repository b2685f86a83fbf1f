"""Fuzzing the table loaders: whatever CSV a user hands over, `from_csv` and `check_images` either
succeed (and keep every row of a valid table) or raise PmlError, never anything else."""

import csv
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pml_jax.data.checks import check_images
from pml_jax.data.tables import from_csv
from pml_jax.errors import PmlError

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
GOOD = ("a.jpg", "b.png", "sub dir/c d.jpg", "ünï €.jpg")  # image files present under the root
ODD_NAMES = ("a\x00.jpg", "../a.jpg", "/nonexistent/a.jpg", "x" * 300 + ".jpg", "sub dir", ".")
DELIMS = (" ", ",", ";", "|", "\t")

odd_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
label = st.text("abcxyzé€_-.", min_size=1, max_size=6)
cell = st.one_of(odd_text, st.sampled_from(["", " ", "NaN", "None", "null", "N/A", '"', '""', "\n", "\r\n",
                                            ",", ";", "\x00", "True", "False", "1", "0", "yes", "2", "1.0"]))


@pytest.fixture(scope="module")
def root():
    folder = Path(tempfile.mkdtemp(prefix="fuzz_images_"))
    for i, name in enumerate(GOOD):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        fmt = "PNG" if name.endswith(".png") else "JPEG"
        Image.fromarray(np.full((12, 10, 3), 40 * i, np.uint8)).save(folder / name, format=fmt)
    yield folder
    shutil.rmtree(folder)


def load_and_check(path: Path, root: Path, **kwargs):
    """The user path: table -> items -> image checks (skipping, then not). Only PmlError may escape."""
    try:
        items = from_csv(path, root, **kwargs)
    except PmlError:
        return None
    try:
        check_images(items, skip_bad=True, workers=2)
    except PmlError:
        pass
    try:
        check_images(items, workers=2)
    except PmlError:
        pass
    return items


def write(tmp: Path, data: bytes) -> Path:
    path = tmp / "table.csv"
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.binary(max_size=300))
def test_binary_junk_only_raises_pml_error(root, tmp_path_factory, data):
    load_and_check(write(tmp_path_factory.mktemp("junk"), data), root)


record = st.fixed_dictionaries({
    "fname": st.one_of(st.sampled_from(GOOD + ODD_NAMES), cell),
    "labels": st.one_of(st.lists(label, max_size=3).map(" ".join), cell),
    "is_valid": st.one_of(st.sampled_from(["0", "1", "True", "false"]), cell),
    "extra": cell,
    "": cell,
})


@settings(FUZZ, max_examples=300)
@given(
    header=st.one_of(st.permutations(["fname", "labels", "is_valid"]), st.permutations(["fname", "labels"]),
                     st.lists(st.sampled_from(["fname", "labels", "is_valid", "extra", "", "fname"]), max_size=5)),
    records=st.lists(st.tuples(record, st.lists(cell, max_size=2)), max_size=8),
    delimiter=st.sampled_from([",", ",", ",", ";", "\t", "|"]),  # pandas reads ',': others lose columns
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    label_delim=st.sampled_from(DELIMS),
    encoding=st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]),
)
def test_odd_tables_only_raise_pml_error(root, tmp_path_factory, header, records, delimiter, quoting, label_delim,
                                         encoding):
    """Odd delimiters and quoting, unicode, NULs, missing values and columns, ragged and duplicate rows."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting)
    writer.writerow(header)
    rows = [[r[h] for h in header] + ragged for r, ragged in records]
    writer.writerows(rows + rows[:2])  # some duplicate rows
    data = out.getvalue().encode(encoding, errors="replace")
    load_and_check(write(tmp_path_factory.mktemp("odd"), data), root, label_delim=label_delim)


@FUZZ
@given(names=st.lists(st.one_of(odd_text, st.sampled_from(GOOD + ODD_NAMES)), min_size=1, max_size=6),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_odd_file_names_only_raise_pml_error(root, tmp_path_factory, names, quoting):
    """Unicode, control characters, NULs, '..', absolute and over-long names in an otherwise valid table."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting)
    writer.writerow(["fname", "labels", "is_valid"])
    writer.writerows([name, "a", i % 2] for i, name in enumerate(names))
    load_and_check(write(tmp_path_factory.mktemp("names"), out.getvalue().encode()), root)


row = st.tuples(st.sampled_from(GOOD), st.lists(label, max_size=3),
                st.sampled_from(["True", "False", "true", "FALSE", "1", "0", " 1 "]))


@FUZZ
@given(rows=st.lists(row, min_size=1, max_size=10), label_delim=st.sampled_from(DELIMS),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), extra=st.booleans())
def test_valid_tables_load_every_row(root, tmp_path_factory, rows, label_delim, quoting, extra):
    """A well-formed table (any label delimiter, quoting, unicode names, repeats, extra columns) loads
    whole: same fnames and splits, labels normalised to space-separated, vocab the sorted union."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=quoting)
    writer.writerow(["fname", "labels", "is_valid"] + (["note"] if extra else []))
    for fname, labels, valid in rows:
        writer.writerow([fname, label_delim.join(labels), valid] + (["x, \"y\""] if extra else []))
    path = write(tmp_path_factory.mktemp("valid"), out.getvalue().encode())
    items = from_csv(path, root, label_delim=label_delim)
    assert list(items.df["fname"]) == [f for f, _, _ in rows]
    assert list(items.df["is_valid"]) == [v.strip().lower() in ("true", "1") for _, _, v in rows]
    assert list(items.df["labels"]) == [" ".join(t for t in labels) for _, labels, _ in rows]
    assert items.vocab == tuple(sorted({t for _, labels, _ in rows for t in labels}))
    try:  # the table may still be unusable for training (e.g. no train split): then only PmlError
        kept, report = check_images(items, workers=2)
    except PmlError as e:
        assert "split" in str(e) or "never occurs in the training split" in str(e) or "both train" in str(e)
    else:
        assert kept is items and report.bad == ()


def test_empty_and_header_only_files(root, tmp_path):
    for data in (b"", b"\n\n", b"fname,labels,is_valid\n", b"\xef\xbb\xbf", b"fname;labels;is_valid\na.jpg;x;0\n"):
        with pytest.raises(PmlError):
            items = from_csv(write(tmp_path, data), root)
            check_images(items)


def test_dataframe_input_with_odd_cells(root):
    df = pd.DataFrame({"fname": ["a.jpg", "b.png", None, 3.0], "labels": ["x", np.nan, "y", "x"],
                       "is_valid": [False, True, False, 0]})
    with pytest.raises(PmlError, match="row 2"):
        from_csv(df, root)
    items = from_csv(df.iloc[:2], root)
    assert list(items.df["labels"]) == ["x", ""] and list(items.df["is_valid"]) == [False, True]
