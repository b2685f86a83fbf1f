"""The four things `run.py` does with a Config: train, lr_find, evaluate, predict.

Every output lands in the config's workdir: config.json, vocab.json, metrics.jsonl, tb/ (TensorBoard),
show_batch.png, lr_find.png/json, threshold_curve.png, per_class_ap.png, predictions.csv,
summary.json, checkpoints/ (for --resume) and model/ (the final model with its thresholds).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from pml_jax import plots
from pml_jax.config import Config
from pml_jax.data.checks import check_images
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.loaders import DataLoaders
from pml_jax.data.show_batch import show_batch
from pml_jax.data.sources import load_source
from pml_jax.errors import PmlError
from pml_jax.metrics import epoch_metrics, per_class_thresholds
from pml_jax.models import create_model
from pml_jax.train.checkpoint import Checkpoints
from pml_jax.train.learner import Learner
from pml_jax.train.tensorboard import TensorBoard

SWEEP = np.linspace(0.05, 0.95, 29)  # the seed's `torch.linspace(0.05, 0.95, 29)`
# What the seed notebook (fastai, resnet50, fine_tune(3, 3e-3, freeze_epochs=4)) reports.
SEED_RESULTS = {"accuracy_multi": 0.952809, "best_accuracy": 0.9563, "best_thresh": 0.5}


def load_items(cfg: Config, log: Callable[[str], None] = print) -> LabelledImages:
    """The config's data source, with every image checked (bad ones dropped with `skip_bad`)."""
    kwargs = {
        "synthetic": {"root": cfg.data_path, "n_images": cfg.synthetic_images},
        "pascal_2007": {"path": cfg.data_path},
        "voc": {"root": cfg.data_path},
        "tfds": {"data_dir": cfg.data_path},
        "csv": {"csv_or_df": cfg.csv, "image_root": cfg.data_path},
    }[cfg.source]
    if cfg.source in ("voc", "csv") and cfg.data_path is None:
        raise PmlError(f"source {cfg.source!r} needs --data_path")
    if cfg.source == "csv" and cfg.csv is None:
        raise PmlError("source 'csv' needs --csv")
    items, report = check_images(load_source(cfg.source, **kwargs), skip_bad=cfg.skip_bad)
    log(report.summary())
    return items


def data_loaders(cfg: Config, items: LabelledImages) -> DataLoaders:
    return DataLoaders(items, size=cfg.size, batch_size=cfg.batch_size, seed=cfg.seed,
                       min_scale=cfg.min_scale, flip=cfg.flip, fast_decode=cfg.fast_decode)


def _dtype(cfg: Config):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _model(cfg: Config, n_out: int, pretrained: str | None):
    """The config's model (arch, head, dtype, seed) for `n_out` classes and its variables."""
    return create_model(cfg.arch, n_out, pretrained, dtype=_dtype(cfg), seed=cfg.seed, head=cfg.head)


def _learner(cfg: Config, items: LabelledImages, log, writer=None, checkpoints: bool = True) -> Learner:
    model, variables = _model(cfg, len(items.vocab), cfg.pretrained)
    meta = {"config": json.loads(cfg.to_json()), "vocab": list(items.vocab)}
    return Learner(model, variables, data_loaders(cfg, items), wd=cfg.wd, thresh=cfg.thresh,
                   dtype=_dtype(cfg), seed=cfg.seed, workdir=cfg.workdir if checkpoints else None,
                   log=log, meta=meta,
                   writer=writer)


def _prepare_workdir(cfg: Config, items: LabelledImages) -> Path:
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.save(workdir / "config.json")
    (workdir / "vocab.json").write_text(json.dumps(list(items.vocab)) + "\n")
    return workdir


def train(cfg: Config, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train as the config says (fine_tune or fit_one_cycle), then write every output; returns the summary."""
    checkpoints = Path(cfg.workdir) / "checkpoints"
    if not resume and checkpoints.is_dir() and Checkpoints(checkpoints).latest_step() is not None:
        raise PmlError(f"{cfg.workdir} already holds checkpoints: pass --resume or choose another --workdir")
    items = load_items(cfg, log)
    workdir = _prepare_workdir(cfg, items)
    dls = data_loaders(cfg, items)
    show_batch(dls, workdir / "show_batch.png")
    writer = TensorBoard(workdir / "tb")
    try:
        learner = _learner(cfg, items, log, writer)
        if resume and learner.resume():
            log(f"resuming from {learner.checkpoints.latest_step()} in {learner.checkpoints.directory}")
        if cfg.schedule == "fine_tune":
            learner.fine_tune(cfg.epochs, cfg.base_lr, cfg.freeze_epochs, cfg.lr_mult, cfg.pct_start)
        else:
            learner.fit_one_cycle(cfg.epochs, cfg.base_lr, cfg.pct_start)
        summary = report(cfg, items, learner, log)
        export_model(workdir / "model", learner, cfg, items.vocab, summary)
    finally:
        writer.close()
    return summary


def report(cfg: Config, items: LabelledImages, learner: Learner, log) -> dict:
    """Validation predictions -> metrics, threshold sweep, per-class cutoffs, plots, CSV, summary."""
    workdir = Path(cfg.workdir)
    probs, targs, mask, _ = learner.get_preds()
    m = jax.device_get(epoch_metrics(probs, targs, mask, thresh=cfg.thresh, thresholds=SWEEP))
    probs, targs, keep = (np.asarray(x) for x in jax.device_get((probs, targs, mask)))  # one transfer
    p, t = probs[keep], targs[keep]
    per_class = np.asarray(per_class_thresholds(p, t, thresholds=np.linspace(0.01, 0.99, 99)))
    summary = {
        "n_valid": int(keep.sum()), "thresh": cfg.thresh,
        "accuracy_multi": float(m["accuracy_multi"]), "best_thresh": float(m["best_thresh"]),
        "best_accuracy": float(m["best_accuracy"]), "mAP": float(m["mAP"]),
        "voc07_mAP": float(m["voc07_mAP"]), "f1_micro": float(m["f1_micro"]),
        "f1_macro": float(m["f1_macro"]), "per_class_thresholds": dict(zip(items.vocab, per_class.tolist())),
        "per_class_ap": dict(zip(items.vocab, np.asarray(m["ap"]).tolist())),
    }
    plots.plot_threshold_curve(SWEEP, {"accuracy_multi": m["sweep_accuracy"], "F1 (micro)": m["sweep_f1_micro"]},
                               summary["best_thresh"], workdir / "threshold_curve.png")
    plots.plot_per_class_ap(items.vocab, m["ap"], workdir / "per_class_ap.png")
    valid = items.subset(True)
    table = pd.DataFrame({"fname": valid["fname"], "labels": valid["labels"],
                          "predicted": [" ".join(np.asarray(items.vocab)[row > cfg.thresh]) for row in p]})
    table = pd.concat([table, pd.DataFrame(p, columns=[f"p_{v}" for v in items.vocab])], axis=1)
    table.to_csv(workdir / "predictions.csv", index=False)
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(summary_table(summary, seed=cfg.source == "pascal_2007" and cfg.arch == "resnet50"))
    return summary


def summary_table(summary: dict, seed: bool = False) -> str:
    """The closing table; with `seed`, the seed notebook's fastai figures side by side."""
    rows = [(f"accuracy_multi @ {summary['thresh']:g}", summary["accuracy_multi"], SEED_RESULTS["accuracy_multi"]),
            ("best sweep threshold", summary["best_thresh"], SEED_RESULTS["best_thresh"]),
            ("accuracy_multi @ best", summary["best_accuracy"], SEED_RESULTS["best_accuracy"]),
            ("mAP (sklearn AP, macro)", summary["mAP"], None),
            ("mAP (VOC07 11-point)", summary["voc07_mAP"], None),
            ("F1 micro @ thresh", summary["f1_micro"], None),
            ("F1 macro @ thresh", summary["f1_macro"], None)]
    head = f"{'metric':<26}{'pml_jax':>10}" + (f"{'fastai seed':>13}" if seed else "")
    lines = [head, "-" * len(head)]
    for name, ours, theirs in rows:
        extra = (f"{theirs:>13.4f}" if theirs is not None else f"{'':>13}") if seed else ""
        lines.append(f"{name:<26}{ours:>10.4f}{extra}")
    return "\n".join(lines)


def export_model(path: Path, learner: Learner, cfg: Config, vocab, summary: dict) -> None:
    """Save params, stats, config, vocab and the chosen thresholds as the run's final model."""
    meta = {"config": json.loads(cfg.to_json()), "vocab": list(vocab), "thresh": cfg.thresh,
            "best_thresh": summary["best_thresh"], "per_class_thresholds": summary["per_class_thresholds"]}
    store = Checkpoints(path, keep=1)  # a new step, so the previous export stays until this one is complete
    store.save((store.latest_step() or 0) + 1, {"params": learner.params, "batch_stats": learner.batch_stats}, meta)


def load_model(workdir: str | Path):
    """(model, variables, meta) of the final model exported in `workdir`."""
    store = Checkpoints(Path(workdir) / "model", keep=1)
    if store.latest_step() is None:
        raise PmlError(f"no trained model in {Path(workdir) / 'model'}: run training with this --workdir first")
    meta = store.read_meta()
    cfg = Config(**meta["config"])
    model, variables = _model(cfg, len(meta["vocab"]), None)
    state, meta = store.restore({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    return model, state, meta


def evaluate(workdir: str | Path, log: Callable[[str], None] = print) -> dict:
    """Re-score the validation set with the exported model of `workdir` (writes eval_summary.json)."""
    model, state, meta = load_model(workdir)
    cfg = Config(**meta["config"])
    items = load_items(cfg, log)
    learner = Learner(model, state, data_loaders(cfg, items), thresh=cfg.thresh, dtype=_dtype(cfg),
                      seed=cfg.seed, log=log)
    summary = report(cfg.replace(workdir=str(workdir)), items, learner, log)
    (Path(workdir) / "eval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
        raise PmlError(f"predict: no images found in {inputs}")
    return files


def predict(workdir: str | Path, inputs: list[str], per_class: bool = False,
            log: Callable[[str], None] = print, batch_size: int = 64) -> pd.DataFrame:
    """Label image files/folders with the exported model of `workdir` and its saved threshold.

    per_class: use the per-class cutoffs chosen on validation instead of the global threshold.
    Writes workdir/predict.csv; returns it as a DataFrame (fname, labels, p_<class>...).
    """
    model, state, meta = load_model(workdir)
    cfg, vocab = Config(**meta["config"]), meta["vocab"]
    files = [str(p.absolute()) for p in image_files(inputs)]
    df = pd.DataFrame({"fname": files, "labels": "", "is_valid": True})
    items, _ = check_images(LabelledImages(df, Path("/"), tuple(vocab), name="predict"), skip_bad=True,
                            tables=False)
    dropped = sorted(set(files) - set(items.df["fname"]))
    for f in dropped:
        log(f"skipped unreadable image {f}")
    learner = Learner(model, state, DataLoaders(items, size=cfg.size, batch_size=batch_size, seed=cfg.seed),
                      dtype=_dtype(cfg), log=log)
    probs, _, mask, _ = learner.get_preds()
    p = np.asarray(jax.device_get(probs))[np.asarray(jax.device_get(mask))]
    cut = np.array([meta["per_class_thresholds"][v] for v in vocab]) if per_class else meta["thresh"]
    labels = [" ".join(np.asarray(vocab)[row > cut]) for row in p]
    out = pd.concat([pd.DataFrame({"fname": items.df["fname"], "labels": labels}),
                     pd.DataFrame(p, columns=[f"p_{v}" for v in vocab])], axis=1)
    out.to_csv(Path(workdir) / "predict.csv", index=False)
    for fname, lab, row in zip(out["fname"], labels, p):
        top = ", ".join(f"{v} {q:.2f}" for v, q in zip(vocab, row) if q > 0.05)
        log(f"{fname}: {lab or '(none)'}  [{top}]")
    return out


def lr_find(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """fastai lr_find on the config's data and model (frozen when the schedule is fine_tune)."""
    items = load_items(cfg, log)
    workdir = _prepare_workdir(cfg, items)
    learner = _learner(cfg, items, log, checkpoints=False)
    result = learner.lr_find(frozen=cfg.schedule == "fine_tune")
    plots.plot_lr_find(result["lrs"], result["losses"], result["suggestion"], workdir / "lr_find.png")
    (workdir / "lr_find.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"lr_find suggestion (valley): {result['suggestion']:.3g}")
    return result
