"""The four things `run.py` does with a Config: train, lr_find, evaluate, predict.

Each mode checks everything it can (config, weights, data, splits) before it writes a file. A
training run is one pass through the stages, in data-flow order: config -> sources (the items)
-> loaders -> model -> Learner fit -> results (pml_jax.results) -> export (pml_jax.export). It
writes into its workdir (a used one makes the run take the next free `<workdir>-N`): config.json,
vocab.json, show_batch.png, metrics.jsonl, tb/, checkpoints/, the results stage's files (loss.png
first) and model/. evaluate and predict run the exported model through
`pml_jax.train.inference.predict_batches` (no Learner, no optimizer): evaluate writes into
<workdir>/eval/ only, predict writes <workdir>/predict.csv; lr_find writes lr_find.png and
lr_find.json. Every file is written by process 0 only.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import pandas as pd

from pml_jax import plots, results
from pml_jax.config import Config
from pml_jax.data.checks import check_images
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.loaders import DataLoaders
from pml_jax.data.show_batch import show_batch
from pml_jax.data.sources import load_source
from pml_jax.errors import PmlError
from pml_jax.export import build_model, export_model, load_model
from pml_jax.models import fetch
from pml_jax.train.inference import predict_batches
from pml_jax.train.learner import Learner
from pml_jax.train.mesh import replicated
from pml_jax.train.precision import compute_dtype
from pml_jax.train.tensorboard import TensorBoard

RUN_MARKERS = ("checkpoints", "model", "metrics.jsonl")  # a workdir holding one of them has been trained in


def check_inputs(cfg: Config) -> None:
    """What needs no data, before anything is read: the flags the config's source needs, and the
    pretrained weights fetched (a missing file or a failed download stops here)."""
    if cfg.source in ("voc", "csv") and cfg.data_path is None:
        raise PmlError(f"source {cfg.source!r} needs --data_path")
    if cfg.source == "csv" and cfg.csv is None:
        raise PmlError("source 'csv' needs --csv")
    if cfg.pretrained:
        fetch(cfg.arch, cfg.pretrained)


def load_items(cfg: Config, log: Callable[[str], None] = print) -> LabelledImages:
    """The config's data source, with every image checked (bad ones dropped with `skip_bad`)."""
    kwargs = {
        "synthetic": {"root": cfg.data_path, "n_images": cfg.synthetic_images},
        "pascal_2007": {"path": cfg.data_path},
        "voc": {"root": cfg.data_path, "year": cfg.voc_year, "valid_split": cfg.valid_split,
                "drop_difficult": cfg.drop_difficult},
        "tfds": {"data_dir": cfg.data_path, "drop_difficult": cfg.drop_difficult},
        "csv": {"csv_or_df": cfg.csv, "image_root": cfg.data_path},
    }[cfg.source]
    items, report = check_images(load_source(cfg.source, **kwargs), skip_bad=cfg.skip_bad)
    log(report.summary())
    return items


def data_loaders(cfg: Config, items: LabelledImages, log: Callable[[str], None] | None = print) -> DataLoaders:
    """The config's loaders for `items`; with `log`, logs the cache decision (kept in RAM or not, its
    size: the image headers are read for it)."""
    dls = DataLoaders(items, size=cfg.size, batch_size=cfg.batch_size, seed=cfg.seed,
                      min_scale=cfg.min_scale, flip=cfg.flip, fast_decode=cfg.fast_decode,
                      cache=cfg.cache, augment=cfg.augment)
    if log is not None:
        log_cache(dls, log)
    return dls


def log_cache(dls: DataLoaders, log: Callable[[str], None]) -> None:
    """Log whether the images are kept in RAM (the headers are read to decide) and where crops are resized."""
    log(f"{dls.cache_decision().summary()}; train crops resized on the {dls.augment_on}")


def run_folder(workdir: Path, resume: bool, log: Callable[[str], None] = print) -> Path:
    """`workdir`, or with it already trained in (and no `resume`) the first free `<workdir>-N`, N >= 2.

    Every process of a multi-host run gets process 0's choice.
    """
    def used(path: Path) -> bool:
        return any((path / name).exists() for name in RUN_MARKERS)

    n = 1
    if not resume:
        while used(workdir if n == 1 else workdir.with_name(f"{workdir.name}-{n}")):
            n += 1
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        n = int(multihost_utils.broadcast_one_to_all(np.int32(n)))
    if n == 1:
        return workdir
    chosen = workdir.with_name(f"{workdir.name}-{n}")
    log(f"{workdir} holds an earlier run: this run writes to {chosen} (--resume continues {workdir})")
    return chosen


def header(cfg: Config, dls: DataLoaders, mode: str) -> str:
    """The opening lines: devices, data, model and schedule, where the outputs go."""
    devices = jax.devices()
    items = dls.items
    n_train, n_valid = len(items.subset(False)), len(items.subset(True))
    weights = f"{cfg.pretrained} weights" if cfg.pretrained else "from scratch"
    if cfg.schedule == "fine_tune":
        plan = f"fine_tune({cfg.epochs}, base_lr={cfg.base_lr:g}, freeze_epochs={cfg.freeze_epochs})"
    else:
        plan = f"fit_one_cycle({cfg.epochs}, lr_max={cfg.base_lr:g})"
    classes = ", ".join(items.vocab[:8]) + (", ..." if len(items.vocab) > 8 else "")
    return "\n".join([
        f"pml_jax {mode}: {len(devices)} {devices[0].platform} device(s) ({devices[0].device_kind}), "
        f"{jax.process_count()} process(es), compute {np.dtype(compute_dtype(cfg.dtype)).name}",
        f"data: {items.name}, {n_train} train / {n_valid} valid items, {len(items.vocab)} classes ({classes})",
        f"model: {cfg.arch} + {cfg.head} head, {weights}; {cfg.size} px, batch {cfg.batch_size} "
        f"({dls.steps_per_epoch} steps/epoch); {plan}",
        f"outputs: {cfg.workdir}",
    ])


def write_run_files(cfg: Config, dls: DataLoaders) -> Path:
    """config.json, vocab.json and show_batch.png of a new run (process 0 only); returns the workdir."""
    workdir = Path(cfg.workdir)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg.save(workdir / "config.json")
        (workdir / "vocab.json").write_text(json.dumps(list(dls.vocab)) + "\n")
        show_batch(dls, workdir / "show_batch.png")
    return workdir


def _learner(cfg: Config, dls: DataLoaders, model, variables: dict, log, workdir: Path | None = None,
             writer=None) -> Learner:
    """A Learner with the config's settings for `model` on `dls`; checkpoints in `workdir` (None: none)."""
    meta = {"config": json.loads(cfg.to_json()), "vocab": list(dls.vocab)}
    return Learner(model, variables, dls, wd=cfg.wd, thresh=cfg.thresh, dtype=compute_dtype(cfg.dtype),
                   seed=cfg.seed, workdir=workdir, log=log, meta=meta, writer=writer,
                   checkpoint_minutes=cfg.checkpoint_minutes)


def _fit(learner: Learner, cfg: Config, resume: bool, log) -> None:
    """The config's schedule (fine_tune or fit_one_cycle), continued from the newest checkpoint with `resume`."""
    if resume and learner.resume():
        log(f"resuming from step {learner.checkpoints.latest_step()} in {learner.checkpoints.directory}")
    if cfg.schedule == "fine_tune":
        learner.fine_tune(cfg.epochs, cfg.base_lr, cfg.freeze_epochs, cfg.lr_mult, cfg.pct_start)
    else:
        learner.fit_one_cycle(cfg.epochs, cfg.base_lr, cfg.pct_start)


def train(cfg: Config, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train as the config says, then write every output; returns the results summary.

    The model is built first and its steps compile in the background (`Learner.compile_ahead`)
    while the data is read, checked and shown, and the run's first files are written."""
    cfg = cfg.replace(workdir=str(run_folder(Path(cfg.workdir), resume, log)))
    check_inputs(cfg)
    dls = data_loaders(cfg, load_items(cfg, log), log=None)
    dls.check_fit()
    model, variables = build_model(cfg, len(dls.vocab), cfg.pretrained)
    learner = _learner(cfg, dls, model, variables, log, Path(cfg.workdir))  # writes nothing yet
    report_ahead = functools.partial(results.compile_summary, dls.valid_rows, len(dls.vocab), cfg.thresh,
                                     replicated(learner.mesh))
    learner.compile_ahead([True, False] if cfg.schedule == "fine_tune" and cfg.freeze_epochs > 0 else [False],
                          then=[report_ahead])
    log_cache(dls, log)
    log(header(cfg, dls, "train"))
    workdir = write_run_files(cfg, dls)
    learner.writer = TensorBoard(workdir / "tb") if jax.process_index() == 0 else None
    try:
        _fit(learner, cfg, resume, log)
        learner.wait_ahead()
        summary, paths = results.report(learner.get_preds(), dls, cfg.thresh, workdir, log,
                                        seed=cfg.source == "pascal_2007" and cfg.arch == "resnet50",
                                        training=(learner.history, learner.step_losses))
        export_model(workdir / "model", {"params": learner.params, "batch_stats": learner.batch_stats},
                     cfg, dls.vocab, summary)
    finally:
        learner.close()
        if learner.writer is not None:
            learner.writer.close()
    written = ["config.json", "vocab.json", "show_batch.png", "metrics.jsonl", "tb", "checkpoints"]
    results.log_outputs(workdir, [*(workdir / n for n in written), *paths, workdir / "model"], log)
    return summary


def evaluate(workdir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Re-score the validation set with the exported model of `workdir`; writes into <workdir>/eval/ only."""
    model, variables, meta = load_model(workdir)
    cfg = Config(**meta["config"])
    dls = data_loaders(cfg, load_items(cfg, log), log)
    dls.check_valid()
    preds = predict_batches(model, variables, dls.valid(), dtype=compute_dtype(cfg.dtype), progress="evaluating")
    outdir = Path(workdir) / "eval"
    summary, paths = results.report(preds, dls, cfg.thresh, outdir, log)
    results.log_outputs(outdir, paths, log)
    return summary


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


def image_files(inputs: list[str]) -> list[Path]:
    """Files named in `inputs`, folders expanded to their images (sorted); missing paths raise PmlError."""
    files = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise PmlError(f"predict: {path} does not exist")
    if not files:
        raise PmlError(f"predict: no images found in {inputs}" if inputs else
                       "predict: name the image files or folders to label after the flags")
    return files


def predict(workdir: str | Path, inputs: list[str], per_class: bool = False,
            log: Callable[[str], None] = print, batch_size: int = 64) -> pd.DataFrame:
    """Label image files/folders with the exported model of `workdir` and its saved threshold.

    per_class: use the per-class cutoffs chosen on validation instead of the global threshold.
    Writes workdir/predict.csv; returns it as a DataFrame (fname, predicted, p_<class>...).
    """
    files = [str(p.absolute()) for p in image_files(inputs)]
    model, variables, meta = load_model(workdir)
    cfg, vocab = Config(**meta["config"]), meta["vocab"]
    df = pd.DataFrame({"fname": files, "labels": "", "is_valid": True})
    items, report_ = check_images(LabelledImages(df, Path("/"), tuple(vocab), name="predict"), skip_bad=True,
                                  tables=False)
    if len(items.df) == 0:
        raise PmlError(f"predict: none of the {len(files)} image(s) could be read\n" + report_.summary())
    for f in sorted(set(files) - set(items.df["fname"])):
        log(f"skipped unreadable image {f}")
    once = DataLoaders(items, size=cfg.size, batch_size=batch_size, seed=cfg.seed, cache="none")  # one pass
    probs, _, mask, _ = predict_batches(model, variables, once.valid(), dtype=compute_dtype(cfg.dtype),
                                        progress="predicting")
    probs, mask = jax.device_get((probs, mask))
    p = np.asarray(probs)[np.asarray(mask)]
    cut = np.array([meta["per_class_thresholds"][v] for v in vocab]) if per_class else meta["thresh"]
    out = results.predictions_table(items.df["fname"], p, vocab, cut)
    for fname, lab, row in zip(out["fname"], out["predicted"], p):
        top = ", ".join(f"{v} {q:.2f}" for v, q in zip(vocab, row) if q > 0.05)
        log(f"{fname}: {lab or '(none)'}  [{top}]")
    path = Path(workdir) / "predict.csv"
    if jax.process_index() == 0:
        out.to_csv(path, index=False)
    log(f"wrote {len(out)} predictions to {path}")
    return out


def lr_find(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """fastai lr_find on the config's data and model (frozen when the schedule is fine_tune).

    Writes lr_find.png and lr_find.json (the curve, the suggestion and the config) into the workdir.
    """
    check_inputs(cfg)
    dls = data_loaders(cfg, load_items(cfg, log), log)
    log(header(cfg, dls, "lr_find"))
    model, variables = build_model(cfg, len(dls.vocab), cfg.pretrained)
    learner = _learner(cfg, dls, model, variables, log)
    result = learner.lr_find(frozen=cfg.schedule == "fine_tune")
    workdir = Path(cfg.workdir)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        plots.plot_lr_find(result["lrs"], result["losses"], result["suggestion"], workdir / "lr_find.png")
        (workdir / "lr_find.json").write_text(json.dumps({**result, "config": json.loads(cfg.to_json())},
                                                         indent=2) + "\n")
    log(f"lr_find suggestion (valley): {result['suggestion']:.3g}")
    results.log_outputs(workdir, [workdir / "lr_find.png", workdir / "lr_find.json"], log)
    return result
