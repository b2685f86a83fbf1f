"""A local VOCdevkit year folder (Annotations/*.xml, JPEGImages/, ImageSets/Main/*.txt) -> LabelledImages."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from xml.parsers import expat

import pandas as pd

from pml_jax.choices import VOC_VALID_SPLITS
from pml_jax.data.dataset import LabelledImages
from pml_jax.errors import PmlError

# The 20 PASCAL VOC classes, sorted as fastai's vocab sorts them; the vocab of every VOC source.
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
SPLITS = ("trainval", "test")
NAMED = 5  # how many ids or paths an error message names
_YEAR_DIR = re.compile(r"VOC(\d{4})")


def voc(
    root: Path | str,
    split: str = "trainval",
    valid_split: str = "val",
    drop_difficult: bool = False,
    year: str = "2007",
) -> LabelledImages:
    """Items of the VOC<year> folder found at `root`, root/VOC<year> or root/VOCdevkit/VOC<year>.

    split='trainval': the trainval list, is_valid = in val.txt (valid_split='val'; train.txt, when
    present, must be trainval minus val), or trainval then the test list as the validation split
    (valid_split='test', the VOC2007 protocol). split='test': the test list, every item is_valid.
    fname = '<id>.jpg' under JPEGImages/; labels = an image's object names in annotation order,
    duplicates removed, as fastai's pascal CSV lists them; vocab = VOC_CLASSES always.
    `drop_difficult` ignores objects marked difficult. Default False (kept): whether fastai's
    pascal_2007 train.csv keeps them is undetermined; every row of it found in public notebooks
    (000005 chair, 000009 horse person, 008663 car person, 009958 person bicycle, ...) is an image
    VOC2007's ImageSets/Main/<class>_trainval.txt marks with no difficult-only class (0), so both
    readings fit. Images left without a label keep '' and are counted in the returned name.
    """
    if split not in SPLITS:
        raise PmlError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if valid_split not in VOC_VALID_SPLITS:
        raise PmlError(f"valid_split must be one of {list(VOC_VALID_SPLITS)}, got {valid_split!r}")
    year_dir = find_voc_year(Path(root), year)
    ids, flags = split_ids(year_dir, split, valid_split)
    xmls = annotation_paths(year_dir, ids)
    labels = [" ".join(object_names(x, drop_difficult)) for x in xmls]
    df = pd.DataFrame({"fname": [f"{i}.jpg" for i in ids], "labels": labels, "is_valid": flags})
    name = f"VOC{year}-{split}" + (f"/{valid_split}" if split == "trainval" else "")
    unlabelled = labels.count("")
    if unlabelled:
        name += f" ({unlabelled} of {len(ids)} images without a label)"
    return LabelledImages(df, year_dir / "JPEGImages", VOC_CLASSES, name=name)


def find_voc_year(root: Path, year: str = "2007") -> Path:
    """The VOC<year> folder (holding Annotations/ and ImageSets/Main/) among root, root/VOC<year>,
    root/VOCdevkit/VOC<year>; root itself only when it is not named after another year."""
    year = str(year)
    if not re.fullmatch(r"\d{4}", year):
        raise PmlError(f"VOC year must be four digits such as 2007 or 2012, got {year!r}")
    wanted = f"VOC{year}"
    candidates = [root / wanted, root / "VOCdevkit" / wanted]
    if root.name == wanted or not _YEAR_DIR.fullmatch(root.name):
        candidates.insert(0, root)
    for cand in candidates:
        if _is_year_dir(cand):
            return cand
    msg = f"{root}: no {wanted} folder (Annotations/ and ImageSets/Main/) here, in {wanted}/ or VOCdevkit/{wanted}/"
    present = years_present(root)
    if present:
        msg += f"; found {', '.join('VOC' + y for y in present)}; pass --voc_year {present[0]}"
    raise PmlError(msg)


def years_present(root: Path) -> list[str]:
    """Sorted years of the VOC<year> folders at root, in root/ and in root/VOCdevkit/."""
    folders = [root, *_subdirs(root), *_subdirs(root / "VOCdevkit")]
    years = {m.group(1) for d in folders if (m := _YEAR_DIR.fullmatch(d.name)) and _is_year_dir(d)}
    return sorted(years)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _is_year_dir(folder: Path) -> bool:
    return (folder / "Annotations").is_dir() and (folder / "ImageSets" / "Main").is_dir()


def split_ids(year_dir: Path, split: str, valid_split: str) -> tuple[list[str], list[bool]]:
    """Image ids in df order and their is_valid flags, for a checked `split` and `valid_split`."""
    if split == "test":
        test = read_image_set(year_dir, "test")
        return test, [True] * len(test)
    trainval = read_image_set(year_dir, "trainval")
    if valid_split == "test":
        test = read_image_set(year_dir, "test")
        return trainval + test, [False] * len(trainval) + [True] * len(test)
    val = set(check_val_split(year_dir, trainval))
    return trainval, [i in val for i in trainval]


def check_val_split(year_dir: Path, trainval: list[str]) -> list[str]:
    """The val ids, checked to lie in trainval and, when train.txt exists, to be trainval minus train."""
    main = year_dir / "ImageSets" / "Main"
    val = read_image_set(year_dir, "val")
    known = set(trainval)
    stray = [i for i in val if i not in known]
    if stray:
        raise PmlError(f"{main / 'val.txt'}: {len(stray)} id(s) not in {main / 'trainval.txt'}, e.g. {stray[:NAMED]}")
    if not (main / "train.txt").is_file():
        return val
    train = read_image_set(year_dir, "train")
    both = sorted(set(train) & set(val))
    if both:
        raise PmlError(f"{main / 'train.txt'} and {main / 'val.txt'} share {len(both)} id(s), e.g. {both[:NAMED]}")
    covered = set(train) | set(val)
    extra = [i for i in train if i not in known]
    unlisted = [i for i in trainval if i not in covered]
    if extra or unlisted:
        raise PmlError(
            f"{main / 'train.txt'} + {main / 'val.txt'} is not {main / 'trainval.txt'}: "
            f"{len(extra)} train id(s) not in trainval, e.g. {extra[:NAMED]}; "
            f"{len(unlisted)} trainval id(s) in neither, e.g. {unlisted[:NAMED]}"
        )
    return val


def read_image_set(year_dir: Path, name: str) -> list[str]:
    """Image ids of ImageSets/Main/<name>.txt in file order (first column; blank lines skipped;
    a UTF-8 BOM and CRLF line ends tolerated)."""
    path = year_dir / "ImageSets" / "Main" / f"{name}.txt"
    if not path.is_file():
        raise PmlError(f"VOC image set not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PmlError(f"{path}: not UTF-8 text ({e})") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise PmlError(f"{path}: {len(repeated)} image id(s) listed more than once, e.g. {repeated[:NAMED]}")
    return ids


def annotation_paths(year_dir: Path, ids: list[str]) -> list[Path]:
    """Annotations/<id>.xml of every id; all missing ones counted in one PmlError."""
    paths = [year_dir / "Annotations" / f"{i}.xml" for i in ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PmlError(f"{len(missing)} of {len(paths)} VOC annotations not found, e.g. {missing[:NAMED]}")
    return paths


def object_names(xml_path: Path, drop_difficult: bool = False) -> list[str]:
    """Unique <object><name> values of a VOC annotation, in annotation order; each one a VOC class."""
    root = parse_annotation(xml_path)
    if root.tag != "annotation":
        raise PmlError(f"{xml_path}: not a VOC annotation (root element <{root.tag}>)")
    names: list[str] = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise PmlError(f"{xml_path}: object name {name!r} is not a VOC class {list(VOC_CLASSES)}")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise PmlError(f"{xml_path}: <difficult> of a {name} is {difficult!r}, not 0 or 1")
        if not (drop_difficult and difficult == "1") and name not in names:
            names.append(name)
    return names


def parse_annotation(xml_path: Path) -> ET.Element:
    """The root element of an XML file, read by expat with any DOCTYPE refused (entities, internal
    or external, can only be declared inside one, so none is ever expanded or fetched)."""

    def refuse(*_):
        raise PmlError(f"{xml_path}: has a DOCTYPE (entity declarations are refused in VOC annotations)")

    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        with open(xml_path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as e:
        raise PmlError(f"{xml_path}: not valid XML ({e})") from None
    return builder.close()
