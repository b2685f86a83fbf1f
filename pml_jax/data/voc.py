"""A local VOCdevkit/VOC2007 folder (Annotations/*.xml, JPEGImages/, ImageSets/Main/*.txt) -> LabelledImages."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from pml_jax.data.dataset import LabelledImages, vocab_of
from pml_jax.errors import PmlError


def voc(
    root: Path | str,
    split: str = "trainval",
    split_valid: str = "val",
    drop_difficult: bool = False,
) -> LabelledImages:
    """Items of a VOC devkit year folder; `root` may be VOC2007 itself, VOCdevkit or the folder above it.

    split='trainval': the trainval list; split_valid='val' marks the official val list as is_valid
    (train.txt is the rest), split_valid='test' adds the test list as the validation split (the
    VOC2007 protocol: train on trainval, evaluate on test). split='test': the test list only, every
    item is_valid. Labels are an image's object names in annotation order, duplicates removed
    (as fastai's pascal CSV lists them); `drop_difficult` ignores objects marked difficult. An image
    left with no object keeps an empty label. fname = '<id>.jpg' under root/JPEGImages.
    """
    year = find_voc_year(Path(root))
    if split == "trainval":
        if split_valid not in ("val", "test"):
            raise PmlError(f"split_valid must be 'val' or 'test', got {split_valid!r}")
        ids = read_image_set(year, "trainval")
        if split_valid == "val":
            valid = set(read_image_set(year, "val"))
            flags = [i in valid for i in ids]
        else:
            test = read_image_set(year, "test")
            flags = [False] * len(ids) + [True] * len(test)
            ids = ids + test
    elif split == "test":
        ids = read_image_set(year, "test")
        flags = [True] * len(ids)
    else:
        raise PmlError(f"split must be 'trainval' or 'test', got {split!r}")
    labels = [" ".join(object_names(year / "Annotations" / f"{i}.xml", drop_difficult)) for i in ids]
    df = pd.DataFrame({"fname": [f"{i}.jpg" for i in ids], "labels": labels, "is_valid": flags})
    return LabelledImages(df, year / "JPEGImages", vocab_of(labels), name=f"{year.name}-{split}")


def find_voc_year(root: Path, year: str = "VOC2007") -> Path:
    """The folder holding Annotations/ and ImageSets/ among root, root/year, root/VOCdevkit/year."""
    for cand in (root, root / year, root / "VOCdevkit" / year):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return cand
    raise PmlError(f"{root}: no VOC folder (Annotations/ and ImageSets/Main/) here, in {year}/ or VOCdevkit/{year}/")


def read_image_set(year: Path, name: str) -> list[str]:
    """Image ids of ImageSets/Main/<name>.txt in file order (first column; blank lines skipped)."""
    path = year / "ImageSets" / "Main" / f"{name}.txt"
    if not path.is_file():
        raise PmlError(f"VOC image set not found: {path}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        raise PmlError(f"{path}: duplicate image ids")
    return ids


def object_names(xml_path: Path, drop_difficult: bool = False) -> list[str]:
    """Unique <object><name> values of a VOC annotation, in annotation order."""
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise PmlError(f"VOC annotation not found: {xml_path}") from None
    except ET.ParseError as e:
        raise PmlError(f"{xml_path}: not valid XML ({e})") from None
    names: list[str] = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if not name or any(c.isspace() for c in name):
            raise PmlError(f"{xml_path}: object name {name!r} is empty or contains whitespace")
        if drop_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            continue
        if name not in names:
            names.append(name)
    return names
