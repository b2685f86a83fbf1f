"""`python run.py`: flags -> Config -> workflow. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pml_jax.config import DTYPES, HEADS, MODES, PRESETS, SCHEDULES, SOURCES, Config, preset
from pml_jax.errors import PmlError
from pml_jax.train.interrupt import StopRequested

HELP = {
    "source": "data source",
    "data_path": "dataset folder (pascal_2007 / VOCdevkit / tfds data_dir / csv image folder)",
    "csv": "csv source: the table (fname, labels, is_valid columns)",
    "skip_bad": "drop unreadable images and report them instead of stopping",
    "synthetic_images": "number of images of the generated synthetic set",
    "size": "image side in pixels",
    "min_scale": "RandomResizedCrop's smallest area fraction",
    "flip": "random horizontal flips in training",
    "fast_decode": "decode train JPEGs at a reduced scale when the crop allows (false: pixel-exact fastai crops)",
    "batch_size": "global batch size (all devices, all processes)",
    "arch": "resnet18 | resnet34 | resnet50 | resnet101 | resnet152",
    "pretrained": "IMAGENET1K_V1 | IMAGENET1K_V2 | timm/<repo> | a local .pth/.safetensors/.npz; none = from scratch",
    "head": "fastai (create_head, for fine-tuning) | linear (torchvision's avg pool + Linear, for from scratch)",
    "dtype": "compute dtype (params stay float32)",
    "schedule": "fine_tune (pretrained) or one_cycle (from scratch)",
    "epochs": "epochs (the unfrozen epochs for fine_tune)",
    "freeze_epochs": "fine_tune's frozen epochs",
    "base_lr": "fine_tune's base_lr, or one_cycle's lr_max",
    "lr_mult": "fine_tune's ratio of head lr to stem lr",
    "pct_start": "fraction of one-cycle steps spent warming up",
    "wd": "decoupled weight decay",
    "thresh": "accuracy_multi threshold reported each epoch",
    "seed": "seed of everything random",
    "workdir": "where outputs and checkpoints go",
}
CHOICES = {"source": SOURCES, "head": HEADS, "schedule": SCHEDULES, "dtype": DTYPES}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _optional_str(text: str) -> str | None:
    return None if text.lower() in ("", "none") else text


def parser() -> argparse.ArgumentParser:
    """One flag per Config field (defaults shown are the demo preset's), plus mode/preset/resume/inputs."""
    p = argparse.ArgumentParser(
        prog="run.py",
        description="Multi-label image classification, fastai's chapter-6 workflow on JAX.")
    p.add_argument("--mode", choices=MODES, default="train", help="what to do (default: train)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo", help="defaults to start from (default: demo)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in workdir")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: join with jax.distributed.initialize() (TPU pods and SLURM need nothing more)")
    p.add_argument("--coordinator", help="multi-host elsewhere: host:port of process 0")
    p.add_argument("--num_processes", type=int, help="multi-host elsewhere: number of processes")
    p.add_argument("--process_id", type=int, help="multi-host elsewhere: this process's index")
    p.add_argument("--per_class", action="store_true", help="predict: use per-class thresholds")
    p.add_argument("inputs", nargs="*", help="predict: image files or folders")
    demo = PRESETS["demo"]
    for f in dataclasses.fields(Config):
        default = getattr(demo, f.name)
        kind = _bool if isinstance(default, bool) else type(default) if default is not None else _optional_str
        p.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, choices=CHOICES.get(f.name),
                       help=f"{HELP[f.name]} (demo: {default})")
    return p


def config_from(args: argparse.Namespace) -> Config:
    """The preset with every flag given on the command line applied."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    return preset(args.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        from pml_jax import workflow
        from pml_jax.train.compile_cache import enable_compile_cache

        if args.distributed:
            from pml_jax.train.mesh import initialize_distributed
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        enable_compile_cache()
        cfg = config_from(args)
        if args.mode == "train":
            workflow.train(cfg, resume=args.resume)
        elif args.mode == "lr_find":
            workflow.lr_find(cfg)
        elif args.mode == "evaluate":
            workflow.evaluate(cfg.workdir)
        else:
            workflow.predict(cfg.workdir, args.inputs, per_class=args.per_class)
    except PmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except StopRequested as e:
        print(f"{e}; a checkpoint was saved: rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0
