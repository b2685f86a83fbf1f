"""`python run.py`: flags -> Config -> workflow. User errors print one line and exit 2."""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import os
import sys

from pml_jax.config import MODES, PRESETS, Config, preset
from pml_jax.errors import PmlError
from pml_jax.train.interrupt import StopRequested


class _Parser(argparse.ArgumentParser):
    """argparse with exact flag names only (no prefix matching) and one `error:` line for a bad flag."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


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
    p = _Parser(
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
        p.add_argument(f"--{f.name}", type=kind, default=argparse.SUPPRESS, choices=f.metadata["choices"],
                       help=f"{f.metadata['help']} (demo: {default})")
    return p


def config_from(args: argparse.Namespace) -> Config:
    """The preset with every flag given on the command line applied."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config) if hasattr(args, f.name)}
    return preset(args.preset, **overrides)


def main(argv: list[str] | None = None) -> int:
    """Run the mode the flags name; 0 on success, 2 for a user mistake (one `error:` line), 130 on a stop signal."""
    p = parser()
    try:
        args = p.parse_args(argv)
        if args.inputs and args.mode != "predict":
            p.error(f"unrecognized arguments: {' '.join(args.inputs)} (image inputs are for --mode predict)")
    except SystemExit as e:  # a bad flag (already reported on one line) or --help
        return e.code
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        cfg = config_from(args)  # every value checked before anything heavy is imported or read
        from pml_jax import workflow
        from pml_jax.train.compile_cache import enable_compile_cache

        if args.distributed:
            from pml_jax.train.mesh import initialize_distributed
            initialize_distributed(args.coordinator, args.num_processes, args.process_id)
        enable_compile_cache()
        if args.mode == "train":
            workflow.train(cfg, resume=args.resume)
        elif args.mode == "lr_find":
            workflow.lr_find(cfg)
        elif args.mode == "evaluate":
            workflow.evaluate(cfg.workdir)
        else:
            workflow.predict(cfg.workdir, args.inputs, per_class=args.per_class)
    except PmlError as e:
        first, *details = str(e).splitlines() or [""]
        for line in details:  # the details first, so the one error line is the last thing printed
            print(line, file=sys.stderr)
        print(f"error: {first}", file=sys.stderr)
        return 2
    except StopRequested as e:
        print(f"{e}; a checkpoint was saved: rerun with --resume to continue", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """The console entry (run.py, `pml-jax`): `main`, then the process ends without the interpreter's
    teardown of TensorFlow and XLA (~1.5 s on a 2-core VM): the exit handlers run (jax's among them,
    which leaves a multi-host run cleanly), output is flushed, then `os._exit`. Every file of a run is
    closed by then."""
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
