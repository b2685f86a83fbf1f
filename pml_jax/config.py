"""One frozen config object for a run, and the named presets ("demo", "fastbook")."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pml_jax.errors import PmlError

SOURCES = ("synthetic", "pascal_2007", "voc", "tfds", "csv")
HEADS = ("fastai", "linear")  # classifier heads (pml_jax.models.create_model)
SCHEDULES = ("fine_tune", "one_cycle")
DTYPES = ("float32", "bfloat16")
MODES = ("train", "lr_find", "evaluate", "predict")


@dataclass(frozen=True)
class Config:
    """Everything that defines a run; a run is reproducible from it (and its seed)."""

    # data
    source: str = "synthetic"
    data_path: str | None = None  # pascal_2007 / voc root, or the image folder of a csv source
    csv: str | None = None  # csv source: the table
    skip_bad: bool = False  # drop unreadable images (and report them) instead of failing
    synthetic_images: int = 2500  # size of the generated synthetic set
    size: int = 64
    min_scale: float = 0.35
    flip: bool = False
    fast_decode: bool = True  # False: train crops pixel-identical to fastai's (slower decode)
    batch_size: int = 64
    # model
    arch: str = "resnet18"
    pretrained: str | None = None  # None | IMAGENET1K_V1 | IMAGENET1K_V2 | timm/<repo> | a local file
    head: str = "fastai"  # fastai's create_head, or "linear": torchvision's avg pool + Linear
    dtype: str = "float32"
    # schedule
    schedule: str = "one_cycle"
    epochs: int = 8
    freeze_epochs: int = 1
    base_lr: float = 1e-2
    lr_mult: float = 100.0
    pct_start: float = 0.25
    wd: float = 0.01
    # evaluation
    thresh: float = 0.5
    # run
    seed: int = 42
    workdir: str = "runs/demo"

    def __post_init__(self):
        for name, allowed in (("source", SOURCES), ("head", HEADS), ("schedule", SCHEDULES),
                              ("dtype", DTYPES)):
            value = getattr(self, name)
            if value not in allowed:
                raise PmlError(f"{name}={value!r} is not one of {list(allowed)}")
        for name in ("size", "batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise PmlError(f"{name} must be positive, got {getattr(self, name)}")
        if self.freeze_epochs < 0:
            raise PmlError(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if not 0.0 < self.min_scale <= 1.0:
            raise PmlError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.thresh <= 1.0:
            raise PmlError(f"thresh must be in [0, 1], got {self.thresh}")
        if self.base_lr <= 0 or self.wd < 0:
            raise PmlError(f"need base_lr > 0 and wd >= 0, got base_lr={self.base_lr} wd={self.wd}")

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
