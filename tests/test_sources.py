"""Data sources: from_csv, pascal_2007 (download from a local server), VOCdevkit, tfds voc/2007, dispatcher."""

import dataclasses
import hashlib
import io
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pml_jax.config import Config
from pml_jax.data import sources
from pml_jax.data.sources import from_csv, load_source, pascal_2007, synthetic, tfds_voc, voc
from pml_jax.data.tables import parse_is_valid, random_split
from pml_jax.data.voc import VOC_CLASSES
from pml_jax.errors import PmlError
from pml_jax.paths import cache_dir


def jpeg_bytes(seed: int, size=(24, 16)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


# ---------------------------------------------------------------- from_csv

def test_from_csv_reads_table_and_builds_sorted_vocab(tmp_path):
    (tmp_path / "t.csv").write_text("fname,labels,is_valid\na.jpg,dog cat,False\nb.jpg,,True\nc.jpg,bird,false\n")
    items = from_csv(tmp_path / "t.csv", tmp_path / "img")
    assert items.vocab == ("bird", "cat", "dog")
    assert list(items.df["labels"]) == ["dog cat", "", "bird"]
    assert list(items.df["is_valid"]) == [False, True, False]
    assert items.root == tmp_path / "img"
    np.testing.assert_array_equal(items.targets(False), [[0, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(items.targets(True), [[0, 0, 0]])


def test_from_csv_other_columns_and_delimiter_are_normalised():
    df = pd.DataFrame({"image": ["x.png", "y.png"], "tags": ["a|b", "c"], "valid": [1, 0]})
    items = from_csv(df, "/imgs", fname_col="image", label_col="tags", valid_col="valid", label_delim="|")
    assert list(items.df.columns) == ["fname", "labels", "is_valid"]
    assert list(items.df["labels"]) == ["a b", "c"]
    assert list(items.df["is_valid"]) == [True, False]


def test_from_csv_numeric_and_list_labels_are_kept():
    """Class ids (ints, or floats after pandas filled a gap with NaN) and lists are labels, not 'no label'."""
    ids = pd.DataFrame({"fname": ["a.png", "b.png", "c.png"], "labels": [3, 12, 3], "is_valid": False})
    assert list(from_csv(ids, "/imgs").df["labels"]) == ["3", "12", "3"]
    gaps = pd.DataFrame({"fname": ["a.png", "b.png"], "labels": [7, None], "is_valid": False})
    assert gaps["labels"].dtype == float
    items = from_csv(gaps, "/imgs")
    assert list(items.df["labels"]) == ["7", ""] and items.vocab == ("7",)
    lists = pd.DataFrame({"fname": ["a.png", "b.png"], "labels": [["cat", "dog"], []], "is_valid": False})
    items = from_csv(lists, "/imgs")
    assert list(items.df["labels"]) == ["cat dog", ""] and items.vocab == ("cat", "dog")


def test_from_csv_label_with_space_under_other_delimiter_is_refused():
    df = pd.DataFrame({"fname": ["x.png"], "labels": ["dining table,person"]})
    with pytest.raises(PmlError, match="row 0.*'dining table'"):
        from_csv(df, "/imgs", label_delim=",")


def test_from_csv_missing_columns_names_file_and_columns(tmp_path):
    (tmp_path / "t.csv").write_text("name,labels\na.jpg,x\n")
    with pytest.raises(PmlError, match=r"t\.csv.*\['fname'\]"):
        from_csv(tmp_path / "t.csv", tmp_path)


@pytest.mark.parametrize("bad", ["yes", "", "2", 2, float("nan"), None])
def test_is_valid_parsing_is_strict_and_names_the_row(bad):
    with pytest.raises(PmlError, match="row 2"):
        parse_is_valid([True, "0", bad], "t.csv")


def test_is_valid_accepts_bools_numbers_and_strings():
    got = parse_is_valid([True, False, np.bool_(True), 1, 0, 1.0, "True", "false", "1", "0", " TRUE "])
    assert got.tolist() == [True, False, True, True, False, True, True, False, True, False, True]


def test_random_split_is_seeded_and_sized_like_random_splitter():
    df = pd.DataFrame({"fname": [f"{i}.jpg" for i in range(53)], "labels": ["a"] * 53})
    a, b = from_csv(df, "/x", valid_pct=0.2, seed=42), from_csv(df, "/x", valid_pct=0.2, seed=42)
    assert a.df["is_valid"].sum() == int(0.2 * 53) == 10
    assert a.df["is_valid"].tolist() == b.df["is_valid"].tolist()
    assert random_split(53, 0.2, 43).tolist() != a.df["is_valid"].tolist()
    assert random_split(10, 0.0, 0).sum() == 0
    with pytest.raises(PmlError):
        random_split(10, 1.0, 0)


def test_from_csv_empty_fname_is_refused():
    with pytest.raises(PmlError, match="row 1"):
        from_csv(pd.DataFrame({"fname": ["a.jpg", ""], "labels": ["x", "y"]}), "/x")


# ---------------------------------------------------------------- pascal_2007 over a local HTTP server

PASCAL_CSV = "fname,labels,is_valid\n000005.jpg,chair,True\n000007.jpg,car,True\n000009.jpg,horse person,True\n000012.jpg,car,False\n000016.jpg,bicycle,True\n"


def make_tgz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pascal_members() -> dict[str, bytes]:
    fnames = [line.split(",")[0] for line in PASCAL_CSV.splitlines()[1:]]
    members = {"pascal_2007/train.csv": PASCAL_CSV.encode(), "pascal_2007/test.csv": b"fname,labels\n000001.jpg,dog\n"}
    members.update({f"pascal_2007/train/{f}": jpeg_bytes(i) for i, f in enumerate(fnames)})
    members["pascal_2007/test/000001.jpg"] = jpeg_bytes(99)
    # incompressible padding so the archive spans several reads and can be cut mid-file
    members["pascal_2007/segmentation/pad.bin"] = np.random.default_rng(0).bytes(300_000)
    return members


class Server:
    """A 127.0.0.1 file server with Range support that can drop the first connection after `drop_after` bytes."""

    def __init__(self, data: bytes, drop_after: int | None = None):
        self.data, self.drop_after, self.requests = data, drop_after, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = server.data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.data) - 1}/{len(server.data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_after is not None:
                    cut, server.drop_after = server.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/pascal_2007.tgz"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def tgz():
    return make_tgz(pascal_members())


def serve(request, data, drop_after=None):
    server = Server(data, drop_after)
    request.addfinalizer(server.close)
    return server


def md5_first_mib(data: bytes) -> str:
    return hashlib.md5(data[: 1 << 20]).hexdigest()


def test_pascal_fresh_download_extracts_into_cache(request, tgz):
    server = serve(request, tgz)
    items = pascal_2007(url=server.url, size=len(tgz), md5_first_mib=md5_first_mib(tgz), progress=False)
    home = cache_dir("data") / "pascal_2007"
    assert items.root == home / "train"
    assert (home / "test.csv").is_file() and (home / "test" / "000001.jpg").is_file()
    assert items.df["fname"].tolist() == ["000005.jpg", "000007.jpg", "000009.jpg", "000012.jpg", "000016.jpg"]
    assert items.vocab == ("bicycle", "car", "chair", "horse", "person")
    assert items.df["is_valid"].tolist() == [True, True, True, False, True]
    assert Path(items.paths(False)[0]).read_bytes() == jpeg_bytes(3)
    assert not (home.parent / "pascal_2007.tgz").exists()  # archive removed after extraction
    assert not [p for p in home.parent.iterdir() if p.name.startswith(".extract-")]
    # found in the cache now: no network, even with download=False
    again = pascal_2007(download=False)
    assert again.df.equals(items.df) and len(server.requests) == 1


def test_pascal_interrupted_download_resumes_with_range(request, tmp_path, tgz):
    cut = 100_000
    server = serve(request, tgz, drop_after=cut)
    kw = dict(path=tmp_path / "pascal_2007", url=server.url, size=len(tgz), md5_first_mib=md5_first_mib(tgz), progress=False)
    with pytest.raises(PmlError, match="rerun to resume"):
        pascal_2007(**kw)
    part = tmp_path / "pascal_2007.tgz.part"
    assert part.stat().st_size == cut
    items = pascal_2007(**kw)
    assert server.requests == [None, f"bytes={cut}-"]
    assert len(items.df) == 5 and not part.exists()


def test_pascal_bad_checksum_is_refused_and_deleted(request, tmp_path, tgz):
    server = serve(request, tgz)
    with pytest.raises(PmlError, match="MD5 of the first MiB"):
        pascal_2007(tmp_path / "p", url=server.url, size=len(tgz), md5_first_mib="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(PmlError, match="corrupt"):
        pascal_2007(tmp_path / "p", url=server.url, size=len(tgz) + 1, md5_first_mib=None, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_pascal_tar_with_parent_member_is_refused(request, tmp_path):
    evil = make_tgz({"pascal_2007/train.csv": PASCAL_CSV.encode(), "../evil.txt": b"owned"})
    server = serve(request, evil)
    with pytest.raises(PmlError, match="outside"):
        pascal_2007(tmp_path / "data" / "pascal_2007", url=server.url, size=len(evil), md5_first_mib=None, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil.txt").exists()
    assert not (tmp_path / "data" / "pascal_2007").exists()


def test_pascal_missing_without_download_or_with_foreign_folder(tmp_path):
    with pytest.raises(PmlError, match="download=False"):
        pascal_2007(tmp_path / "nothing", download=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(PmlError, match="holds no train.csv"):
        pascal_2007(tmp_path / "other", url="http://127.0.0.1:9/never")


# ---------------------------------------------------------------- VOCdevkit

# id -> [(name, difficult)] in annotation order
VOC_OBJECTS = {
    "000001": [("dog", 0), ("person", 0), ("dog", 0)],
    "000002": [("train", 0)],
    "000003": [("person", 1), ("car", 0), ("bicycle", 1)],
    "000004": [("cat", 1)],
    "000005": [("sofa", 0), ("chair", 0)],
    "000006": [("aeroplane", 0)],
}
VOC_SETS = {"train": ["000001", "000003"], "val": ["000002", "000004"], "test": ["000005", "000006"]}


def voc_xml(image_id: str, objects) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{d}</difficult>"
        "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>14</ymax></bndbox></object>"
        for n, d in objects
    )
    return (f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>24</width><height>16</height><depth>3</depth></size>{objs}</annotation>")


def write_devkit(base: Path, year: str = "2007") -> Path:
    """base/VOCdevkit/VOC<year> with 6 images, their annotations and the four image sets; returns it."""
    year_dir = base / "VOCdevkit" / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True)
    for k, (image_id, objects) in enumerate(VOC_OBJECTS.items()):
        (year_dir / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, objects))
        (year_dir / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg_bytes(k))
    sets = dict(VOC_SETS, trainval=sorted(VOC_SETS["train"] + VOC_SETS["val"]))
    for name, ids in sets.items():
        (year_dir / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(i + "\n" for i in ids))
    return year_dir


@pytest.fixture
def devkit(tmp_path) -> Path:
    """tmp/VOCdevkit/VOC2007 (see write_devkit); the fixture is tmp itself."""
    write_devkit(tmp_path)
    return tmp_path


def annotation(devkit: Path, image_id: str) -> Path:
    return devkit / "VOCdevkit" / "VOC2007" / "Annotations" / f"{image_id}.xml"


def image_set(devkit: Path, name: str) -> Path:
    return devkit / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / f"{name}.txt"


def test_voc_trainval_uses_official_val_list(devkit):
    items = voc(devkit)
    df = items.df
    assert df["fname"].tolist() == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    assert df["labels"].tolist() == ["dog person", "train", "person car bicycle", "cat"]
    assert df["is_valid"].tolist() == [False, True, False, True]
    assert items.vocab == VOC_CLASSES and items.name == "VOC2007-trainval/val"
    assert items.root == devkit / "VOCdevkit" / "VOC2007" / "JPEGImages"
    assert all(Path(p).is_file() for p in items.paths(True))


def test_voc_classes_are_the_twenty_sorted_as_fastai_sorts_its_vocab():
    assert len(VOC_CLASSES) == 20 and list(VOC_CLASSES) == sorted(set(VOC_CLASSES))
    assert {"diningtable", "pottedplant", "tvmonitor", "motorbike", "aeroplane"} <= set(VOC_CLASSES)


def test_voc_images_left_without_a_label_are_counted_in_the_name(devkit):
    items = voc(devkit / "VOCdevkit" / "VOC2007", drop_difficult=True)
    assert items.df["labels"].tolist() == ["dog person", "train", "car", ""]
    assert items.name == "VOC2007-trainval/val (1 of 4 images without a label)"
    annotation(devkit, "000002").write_text(voc_xml("000002", []))  # no object at all: legal, counted too
    items = voc(devkit, drop_difficult=True)
    assert items.df["labels"].tolist()[1] == "" and items.name.endswith("(2 of 4 images without a label)")
    assert items.vocab == VOC_CLASSES


def test_voc_test_split_and_test_as_validation(devkit):
    test = voc(devkit / "VOCdevkit", split="test")
    assert test.df["fname"].tolist() == ["000005.jpg", "000006.jpg"] and test.df["is_valid"].all()
    assert test.df["labels"].tolist() == ["sofa chair", "aeroplane"] and test.name == "VOC2007-test"
    protocol = voc(devkit, valid_split="test")
    assert protocol.df["is_valid"].tolist() == [False] * 4 + [True] * 2
    assert protocol.name == "VOC2007-trainval/test"


def test_voc_reads_a_genuine_layout_annotation(devkit):
    # VOC2007's own layout: tab-indented, an <owner><name>, a person with layout <part>s, difficult chairs
    obj = "\t<object>\n\t\t<name>{}</name>\n\t\t<pose>Rear</pose>\n\t\t<truncated>1</truncated>\n" \
          "\t\t<difficult>{}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>263</xmin>\n\t\t\t<ymin>211</ymin>\n" \
          "\t\t\t<xmax>324</xmax>\n\t\t\t<ymax>339</ymax>\n\t\t</bndbox>\n{}\t</object>\n"
    part = "\t\t<part>\n\t\t\t<name>head</name>\n\t\t\t<bndbox><xmin>1</xmin><ymin>1</ymin>" \
           "<xmax>9</xmax><ymax>9</ymax></bndbox>\n\t\t</part>\n"
    text = ("<annotation>\n\t<folder>VOC2007</folder>\n\t<filename>000003.jpg</filename>\n\t<source>\n"
            "\t\t<database>The VOC2007 Database</database>\n\t\t<annotation>PASCAL VOC2007</annotation>\n"
            "\t</source>\n\t<owner>\n\t\t<flickrid>someone</flickrid>\n\t\t<name>?</name>\n\t</owner>\n"
            "\t<size>\n\t\t<width>500</width>\n\t\t<height>375</height>\n\t\t<depth>3</depth>\n\t</size>\n"
            "\t<segmented>0</segmented>\n" + obj.format("chair", 1, "") + obj.format("person", 0, part)
            + obj.format("chair", 0, "") + "</annotation>\n")
    annotation(devkit, "000003").write_text(text)
    assert voc(devkit).df["labels"][2] == "chair person"
    assert voc(devkit, drop_difficult=True).df["labels"][2] == "person chair"


@pytest.mark.parametrize("objects, match", [
    ([("dog", 0), ("hourse", 0)], r"000003\.xml: object name 'hourse' is not a VOC class \['aeroplane'"),
    ([("Dog", 0)], r"000003\.xml: object name 'Dog' is not a VOC class"),
    ([("", 0)], r"000003\.xml: object name '' is not a VOC class"),
    ([("dog", "yes")], r"000003\.xml: <difficult> of a dog is 'yes', not 0 or 1"),
], ids=["misspelt", "capitalised", "empty", "difficult-yes"])
def test_voc_object_names_must_be_voc_classes(devkit, objects, match):
    annotation(devkit, "000003").write_text(voc_xml("000003", objects))
    with pytest.raises(PmlError, match=match):
        voc(devkit)


def test_voc_val_ids_outside_trainval_are_refused(devkit):
    image_set(devkit, "val").write_text("000002\n000004\n000098\n000099\n")
    with pytest.raises(PmlError, match=r"val\.txt: 2 id\(s\) not in \S+trainval\.txt, e.g. \['000098', '000099'\]"):
        voc(devkit)


@pytest.mark.parametrize("train, match", [
    ("000001\n000002\n000003\n", r"train\.txt and \S+val\.txt share 1 id\(s\), e.g. \['000002'\]"),
    ("000001\n", r"train\.txt \+ \S+val\.txt is not \S+trainval\.txt: 0 train .* 1 trainval id\(s\) in neither, "
                 r"e.g. \['000003'\]"),
    ("000001\n000003\n000007\n", r"is not \S+trainval\.txt: 1 train id\(s\) not in trainval, e.g. \['000007'\]"),
], ids=["overlap", "uncovered", "stray-train"])
def test_voc_train_and_val_must_partition_trainval(devkit, train, match):
    image_set(devkit, "train").write_text(train)
    with pytest.raises(PmlError, match=match):
        voc(devkit)


def test_voc_without_train_list_takes_the_rest_of_trainval(devkit):
    image_set(devkit, "train").unlink()
    assert voc(devkit).df["is_valid"].tolist() == [False, True, False, True]


def test_voc_image_sets_tolerate_a_bom_and_crlf(devkit):
    for name, ids in {"trainval": ["000001", "000002", "000003", "000004"], "val": ["000002", "000004"],
                      "train": ["000001", "000003"]}.items():
        image_set(devkit, name).write_bytes(("\ufeff" + "\r\n".join(ids) + "\r\n").encode())
    df = voc(devkit).df
    assert df["fname"].tolist() == ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg"]
    assert df["is_valid"].tolist() == [False, True, False, True]


def test_voc_missing_annotations_are_all_counted(devkit):
    for image_id in ("000001", "000003", "000004"):
        annotation(devkit, image_id).unlink()
    with pytest.raises(PmlError, match=r"3 of 4 VOC annotations not found") as err:
        voc(devkit)
    assert all(f"{i}.xml" in str(err.value) for i in ("000001", "000003", "000004"))
    for image_id in ("000002", "000005", "000006"):
        annotation(devkit, image_id).unlink()
    with pytest.raises(PmlError, match=r"6 of 6 VOC annotations not found") as err:
        voc(devkit, valid_split="test")
    assert str(err.value).count(".xml") == 5  # the first few named, not all


def test_voc_year_is_looked_for_and_the_years_present_are_named(tmp_path):
    write_devkit(tmp_path, year="2012")
    with pytest.raises(PmlError, match=r"no VOC2007 folder .*; found VOC2012; pass --voc_year 2012"):
        voc(tmp_path)
    items = voc(tmp_path, year="2012")
    assert items.name == "VOC2012-trainval/val" and items.root == tmp_path / "VOCdevkit/VOC2012/JPEGImages"
    assert voc(tmp_path / "VOCdevkit" / "VOC2012", year="2012").df.equals(items.df)
    with pytest.raises(PmlError, match="found VOC2012"):  # the VOC2012 folder itself is not read as 2007
        voc(tmp_path / "VOCdevkit" / "VOC2012")
    write_devkit(tmp_path, year="2007")
    assert voc(tmp_path).name == "VOC2007-trainval/val"
    with pytest.raises(PmlError, match="four digits"):
        voc(tmp_path, year="VOC2012")


def _entity_doc(decls: str, ref: str) -> str:
    return f'<?xml version="1.0"?><!DOCTYPE annotation [{decls}]><annotation><object><name>{ref}</name>' \
           "<difficult>0</difficult></object></annotation>"


LAUGHS = '<!ENTITY e0 "lol">' + "".join(f'<!ENTITY e{i} "{f"&e{i - 1};" * 10}">' for i in range(1, 10))


@pytest.mark.parametrize("text", [
    _entity_doc(LAUGHS, "&e9;"),  # billion laughs: 10**9 'lol's if expanded
    _entity_doc('<!ENTITY x SYSTEM "file:///etc/passwd">', "&x;"),  # an external entity
    _entity_doc('<!ENTITY d "dog">', "&d;"),  # even a harmless internal one
], ids=["billion-laughs", "external", "internal"])
def test_voc_annotations_with_a_doctype_are_refused_quickly(devkit, text):
    annotation(devkit, "000003").write_text(text)
    start = time.perf_counter()
    with pytest.raises(PmlError, match=r"000003\.xml: has a DOCTYPE"):
        voc(devkit)
    assert time.perf_counter() - start < 2.0


def test_voc_errors_name_the_problem(devkit, tmp_path):
    with pytest.raises(PmlError, match="no VOC2007 folder"):
        voc(tmp_path / "nowhere")
    with pytest.raises(PmlError, match=r"valid_split must be one of \['val', 'test'\], got 'train'"):
        voc(devkit, valid_split="train")
    with pytest.raises(PmlError, match=r"split must be one of \['trainval', 'test'\], got 'val'"):
        voc(devkit, split="val")
    image_set(devkit, "trainval").write_text("000001\n000002\n000001\n000003\n000004\n")
    with pytest.raises(PmlError, match=r"trainval\.txt: 1 image id\(s\) listed more than once, e.g. \['000001'\]"):
        voc(devkit)
    image_set(devkit, "trainval").write_text("000001\n000002\n000003\n000004\n")
    annotation(devkit, "000002").write_text("<annotation><object>")
    with pytest.raises(PmlError, match=r"000002\.xml: not valid XML"):
        voc(devkit)
    annotation(devkit, "000002").write_text("<annotation><object><name>&x;</name></object></annotation>")
    with pytest.raises(PmlError, match=r"000002\.xml: not valid XML \(undefined entity"):
        voc(devkit)
    annotation(devkit, "000002").write_text("<annotations><object><name>dog</name></object></annotations>")
    with pytest.raises(PmlError, match=r"000002\.xml: not a VOC annotation \(root element <annotations>\)"):
        voc(devkit)


# ---------------------------------------------------------------- tfds voc/2007 (the real builder, prepared offline)

def test_tfds_voc_matches_the_devkit_and_reads_undecoded_jpegs(devkit, tmp_path):
    import tensorflow_datasets as tfds

    data_dir = tmp_path / "tfds"
    with pytest.raises(PmlError, match="not prepared"):
        tfds_voc(data_dir=data_dir)
    # the real voc/2007 builder, its download step pointed at the local devkit instead of the network
    fake_download = lambda self, urls: {k: str(devkit) for k in urls}  # noqa: E731
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", fake_download):
        items = tfds_voc(data_dir=data_dir, download=True)
    local = voc(devkit)
    assert items.root is None and items.vocab == local.vocab
    by_name = local.df.set_index("fname")
    assert sorted(items.df["fname"]) == sorted(local.df["fname"])
    for _, row in items.df.iterrows():
        assert set(row["labels"].split()) == set(by_name.at[row["fname"], "labels"].split())
        assert row["is_valid"] == by_name.at[row["fname"], "is_valid"]
    for is_valid in (False, True):
        pairs = list(items.reader(is_valid).as_numpy_iterator())
        subset = items.subset(is_valid)
        assert len(pairs) == len(subset)
        np.testing.assert_array_equal(np.stack([t for _, t in pairs]), items.targets(is_valid))
        for (data, _), fname in zip(pairs, subset["fname"]):
            # the JPEG file's own bytes, never decoded or re-encoded
            assert data == (devkit / "VOCdevkit/VOC2007/JPEGImages" / fname).read_bytes()
    easy = tfds_voc(data_dir=data_dir, drop_difficult=True)
    assert easy.df.set_index("fname").at["000004.jpg", "labels"] == ""
    test = tfds_voc(data_dir=data_dir, split="test")
    assert test.df["is_valid"].all() and len(list(test.reader(False))) == 0
    assert {row for row in test.df["labels"]} == {"chair sofa", "aeroplane"}


# ---------------------------------------------------------------- dispatcher

def test_load_source_dispatches_and_names_valid_sources(tmp_path):
    df = pd.DataFrame({"fname": ["a.jpg"], "labels": ["x"], "is_valid": [False]})
    assert load_source("csv", csv_or_df=df, image_root=tmp_path).vocab == ("x",)
    assert sources.SOURCES == {"pascal_2007": pascal_2007, "voc": voc, "tfds": tfds_voc, "csv": from_csv,
                               "synthetic": synthetic}
    config_choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(Config)}
    assert tuple(sources.SOURCES) == config_choices["source"]  # the flag offers exactly the loaders there are
    with pytest.raises(PmlError, match=r"unknown data source 'coco'.*\['csv', 'pascal_2007', 'synthetic', 'tfds', 'voc'\]"):
        load_source("coco")
    with pytest.raises(PmlError, match="'voc'.*bogus"):
        load_source("voc", root=tmp_path, bogus=1)


def test_load_source_passes_a_tfds_name_through(tmp_path):
    with pytest.raises(PmlError, match="no_such_dataset_xyz"):
        load_source("tfds", name="no_such_dataset_xyz", data_dir=tmp_path)
