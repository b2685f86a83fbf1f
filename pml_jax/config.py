"""One frozen config object for a run, and the named presets ("demo", "fastbook")."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pml_jax.choices import (ARCHS, AUGMENT_MODES, CACHE_MODES, CHECKPOINT_MINUTES, FAST_DECODE, HEADS, MIN_SCALE,
                              SOURCES, VOC_VALID_SPLITS)
from pml_jax.errors import PmlError
from pml_jax.train.precision import DTYPES

SCHEDULES = ("fine_tune", "one_cycle")
MODES = ("train", "lr_find", "evaluate", "predict")


def _field(default: Any, help: str, choices: tuple | None = None):
    """A Config field with its help text (and its allowed values) beside it."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Config:
    """Everything that defines a run; a run is reproducible from it (and its seed)."""

    # data
    source: str = _field("synthetic", "data source", SOURCES)
    data_path: str | None = _field(
        None, "dataset folder (pascal_2007 / VOCdevkit / tfds data_dir / csv image folder)")
    csv: str | None = _field(None, "csv source: the table (fname, labels, is_valid columns)")
    voc_year: str = _field("2007", "voc source: the year folder to read (VOC2007, VOC2012, ...)")
    valid_split: str = _field(
        "val", "voc source: validation split, the official val list or test (then train on all of trainval)",
        VOC_VALID_SPLITS)
    drop_difficult: bool = _field(False, "voc source: ignore objects marked difficult")
    skip_bad: bool = _field(False, "drop unreadable images and report them instead of stopping")
    synthetic_images: int = _field(2500, "number of images of the generated synthetic set")
    size: int = _field(64, "image side in pixels")
    min_scale: float = _field(MIN_SCALE, "RandomResizedCrop's smallest area fraction")
    flip: bool = _field(False, "random horizontal flips in training")
    fast_decode: bool = _field(
        FAST_DECODE, "without a cache, decode train JPEGs at a reduced scale when the crop allows (false: pixel-exact "
        "fastai crops); crops cut from the cache are exact either way")
    cache: str = _field(
        CACHE_MODES[0], "keep decoded images in RAM (decode once): auto = when they fit half the available memory",
        CACHE_MODES)
    augment: str = _field(
        AUGMENT_MODES[0], "where train crops are resized: device (in jit, from windows the host cuts) | "
        "host (Pillow: fastai's pixels bit for bit with a cache or fast_decode false); auto = device on "
        "GPU/TPU, host on CPU",
        AUGMENT_MODES)
    batch_size: int = _field(64, "global batch size (all devices, all processes)")
    # model
    arch: str = _field("resnet18", "torchvision ResNet depth", tuple(ARCHS))
    pretrained: str | None = _field(
        None, "IMAGENET1K_V1 | IMAGENET1K_V2 | timm/<repo> | a local .pth/.safetensors/.npz; none = from scratch")
    head: str = _field(
        "fastai", "fastai (create_head, for fine-tuning) | linear (torchvision's avg pool + Linear, for from scratch)",
        HEADS)
    dtype: str = _field(
        "auto", "compute dtype: auto = bfloat16 on TPU and bf16 GPUs, float32 on CPU (params stay float32)",
        DTYPES)
    # schedule
    schedule: str = _field("one_cycle", "fine_tune (pretrained) or one_cycle (from scratch)", SCHEDULES)
    epochs: int = _field(8, "epochs (the unfrozen epochs for fine_tune)")
    freeze_epochs: int = _field(1, "fine_tune's frozen epochs")
    base_lr: float = _field(1e-2, "fine_tune's base_lr, or one_cycle's lr_max")
    lr_mult: float = _field(100.0, "fine_tune's ratio of head lr to stem lr")
    pct_start: float = _field(0.25, "fraction of one-cycle steps spent warming up")
    wd: float = _field(0.01, "decoupled weight decay")
    # evaluation
    thresh: float = _field(0.5, "accuracy_multi threshold reported each epoch")
    # run
    seed: int = _field(42, "seed of everything random")
    workdir: str = _field("runs/demo", "where outputs and checkpoints go (a used one: the next free <workdir>-N)")
    checkpoint_minutes: float = _field(
        CHECKPOINT_MINUTES, "an epoch's end saves a checkpoint once this many minutes passed since the last one "
        "(0: every epoch); a phase's last epoch and a stop signal always save")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            allowed = f.metadata["choices"]
            if allowed is not None and getattr(self, f.name) not in allowed:
                raise PmlError(f"{f.name}={getattr(self, f.name)!r} is not one of {list(allowed)}")
        for name in ("size", "batch_size", "epochs", "synthetic_images"):
            if getattr(self, name) <= 0:
                raise PmlError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freeze_epochs < 0:
            raise PmlError(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if not 0.0 < self.min_scale <= 1.0:
            raise PmlError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.thresh <= 1.0:
            raise PmlError(f"thresh must be in [0, 1], got {self.thresh}")
        if not 0.0 <= self.pct_start <= 1.0:
            raise PmlError(f"pct_start must be in [0, 1], got {self.pct_start}")
        if self.checkpoint_minutes < 0:
            raise PmlError(f"checkpoint_minutes must be >= 0, got {self.checkpoint_minutes}")
        if self.base_lr <= 0 or self.wd < 0 or self.lr_mult <= 0:
            raise PmlError(f"need base_lr > 0, lr_mult > 0 and wd >= 0, got base_lr={self.base_lr} "
                           f"lr_mult={self.lr_mult} wd={self.wd}")

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes` applied (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise PmlError(f"unknown config field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


PRESETS: dict[str, Config] = {
    # The embedded synthetic set, resnet18 from scratch at 64 px. Milder crops than fastai's 0.35
    # (whose crops often cut a labelled shape out of these 4-object scenes) and flips. The linear
    # head: fastai's (made for pretrained bodies) learns from scratch several times slower.
    "demo": Config(min_scale=0.75, flip=True, head="linear", epochs=10),
    # fastbook chapter 6 exactly: pascal_2007, pretrained resnet50, fine_tune(3, 3e-3, freeze_epochs=4).
    "fastbook": Config(
        source="pascal_2007",
        size=128,
        fast_decode=False,  # train crops pixel-identical to fastai's
        arch="resnet50",
        pretrained="IMAGENET1K_V1",
        schedule="fine_tune",
        epochs=3,
        freeze_epochs=4,
        base_lr=3e-3,
        pct_start=0.3,
        thresh=0.2,
        workdir="runs/fastbook",
    ),
}


def preset(name: str, **overrides: Any) -> Config:
    """The named preset with `overrides` applied."""
    if name not in PRESETS:
        raise PmlError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
