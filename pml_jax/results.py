"""The results stage: validation predictions -> a summary, a predictions table and pictures.

`report` is the stage's one entry (training and evaluate). `summarize` is pure (arrays in, a
JSON-able dict out); `write_results` owns every file of the stage and writes on process 0 only,
so many hosts never write the same path.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
import pandas as pd

from pml_jax import plots
from pml_jax.metrics import epoch_metrics, per_class_thresholds
from pml_jax.metrics.sweep import DEFAULT_THRESHOLDS

# What the seed notebook (fastai, resnet50, fine_tune(3, 3e-3, freeze_epochs=4)) reports.
SEED_RESULTS = {"accuracy_multi": 0.952809, "best_accuracy": 0.9563, "best_thresh": 0.5}
PER_CLASS_GRID = np.linspace(0.01, 0.99, 99)  # the cutoffs tried for each class's own threshold
TOP_LOSSES = 9  # validation images in top_losses.png


def summarize(probs, targs, mask, vocab: Sequence[str], thresh: float) -> dict:
    """Metrics of validation predictions: probs, targs [N, C] and mask bool [N] (False: padding).

    Returns a JSON-able dict: n_valid, thresh, accuracy_multi, best_thresh, best_accuracy, mAP,
    voc07_mAP, f1_micro, f1_macro, per_class_thresholds and per_class_ap (class -> value), and the
    sweep (thresholds, accuracy_multi, f1_micro curves) over the seed's 29-point grid.
    """
    m, per_class, keep = jax.device_get((
        epoch_metrics(probs, targs, mask, thresh=thresh, thresholds=DEFAULT_THRESHOLDS),
        per_class_thresholds(probs, targs, thresholds=PER_CLASS_GRID, mask=mask), mask))  # numpy, one transfer
    return {
        "n_valid": int(np.sum(keep)), "thresh": float(thresh),
        "accuracy_multi": float(m["accuracy_multi"]), "best_thresh": float(m["best_thresh"]),
        "best_accuracy": float(m["best_accuracy"]), "mAP": float(m["mAP"]),
        "voc07_mAP": float(m["voc07_mAP"]), "f1_micro": float(m["f1_micro"]),
        "f1_macro": float(m["f1_macro"]), "per_class_thresholds": dict(zip(vocab, per_class.tolist())),
        "per_class_ap": dict(zip(vocab, np.asarray(m["ap"]).tolist())),
        "sweep": {"thresholds": np.asarray(m["sweep_thresholds"]).tolist(),
                  "accuracy_multi": np.asarray(m["sweep_accuracy"]).tolist(),
                  "f1_micro": np.asarray(m["sweep_f1_micro"]).tolist()},
    }


def compile_summary(rows: int, n_classes: int, thresh: float, sharding) -> None:
    """Run `summarize`'s programs once on zeros shaped and placed as `rows` gathered predictions of
    `n_classes` (`sharding`: where `predict_batches` puts them), so the report compiles nothing."""
    zeros = jax.device_put(np.zeros((rows, n_classes), np.float32), sharding)
    summarize(zeros, zeros, jax.device_put(np.ones(rows, bool), sharding), [""] * n_classes, thresh)


def predicted_labels(probs: np.ndarray, vocab: Sequence[str], cut) -> list[str]:
    """Space-joined classes whose probability is above `cut` (a float or one per class), per row of [N, C]."""
    names = np.asarray(vocab)
    return [" ".join(names[row > cut]) for row in np.asarray(probs)]


def predictions_table(fnames: Sequence[str], probs: np.ndarray, vocab: Sequence[str], cut,
                      labels: Sequence[str] | None = None) -> pd.DataFrame:
    """fname[, labels (the truth)], predicted (above `cut`), then p_<class> for each class."""
    columns = {"fname": list(fnames)}
    if labels is not None:
        columns["labels"] = list(labels)
    columns["predicted"] = predicted_labels(probs, vocab, cut)
    probs = pd.DataFrame(np.asarray(probs), columns=[f"p_{v}" for v in vocab])
    return pd.concat([pd.DataFrame(columns), probs], axis=1)


def write_results(outdir: Path, summary: dict, table: pd.DataFrame, vocab: Sequence[str],
                  worst: dict | None = None, training: tuple[list[dict], list[float]] | None = None) -> list[Path]:
    """Write summary.json, predictions.csv, threshold_curve.png, per_class_ap.png and (with `worst`:
    {'image' uint8 [K,H,W,3], 'target', 'probs' [K,C], 'loss' [K]}) top_losses.png into `outdir`;
    with `training` (the learner's epoch rows and step losses) loss.png before them.

    Only process 0 writes; returns the paths (every process returns the same list).
    """
    names = ["loss.png"] if training is not None else []
    names += ["summary.json", "predictions.csv", "threshold_curve.png", "per_class_ap.png"]
    names += ["top_losses.png"] if worst is not None else []
    paths = {n: Path(outdir) / n for n in names}
    if jax.process_index() != 0:
        return list(paths.values())
    Path(outdir).mkdir(parents=True, exist_ok=True)
    if training is not None:
        _plot_loss(*training, paths["loss.png"])
    paths["summary.json"].write_text(json.dumps(summary, indent=2) + "\n")
    table.to_csv(paths["predictions.csv"], index=False)
    sweep = summary["sweep"]
    plots.plot_threshold_curve(sweep["thresholds"], {"accuracy_multi": sweep["accuracy_multi"],
                                                     "F1 (micro)": sweep["f1_micro"]},
                               summary["best_thresh"], paths["threshold_curve.png"])
    plots.plot_per_class_ap(vocab, [summary["per_class_ap"][v] for v in vocab], paths["per_class_ap.png"])
    if worst is not None:
        plots.plot_top_losses(worst["image"], worst["target"], worst["probs"], worst["loss"], vocab,
                              summary["thresh"], paths["top_losses.png"], k=len(worst["loss"]))
    return list(paths.values())


def _plot_loss(history: list[dict], step_losses: list[float], path: Path) -> None:
    """loss.png: every step's training loss and each epoch's valid loss, phase starts marked."""
    phase_starts = [prev["step"] for prev, row in zip(history, history[1:]) if row["phase"] != prev["phase"]]
    plots.plot_loss(step_losses, [r["step"] for r in history], [r["valid_loss"] for r in history], path,
                    phase_starts=phase_starts)


def report(preds, dls, thresh: float, outdir: Path, log: Callable[[str], None], seed: bool = False,
           training: tuple[list[dict], list[float]] | None = None) -> tuple[dict, list[Path]]:
    """The results stage over the validation split of `dls` (pml_jax.data.loaders.DataLoaders).

    preds: (probs, targets, mask, losses) of `pml_jax.train.inference.predict_batches` over
    `dls.valid()`. Writes `write_results`'s files into `outdir` (with `training`, loss.png too),
    logs the summary table (with `seed`, beside the seed notebook's figures); returns
    (summary, the paths written).
    """
    summary = summarize(*preds[:3], dls.vocab, thresh)  # device arrays: validation's compiled metrics again
    probs, targs, keep, losses = (np.asarray(x) for x in jax.device_get(tuple(preds)))  # one transfer
    valid = dls.items.subset(True)
    table = predictions_table(valid["fname"], probs[keep], dls.vocab, thresh, valid["labels"])
    worst = np.argsort(-losses[keep], kind="stable")[:TOP_LOSSES]
    shown = {"image": _valid_images(dls, worst) if jax.process_index() == 0 else None,  # only process 0 draws
             "target": targs[keep][worst],
             "probs": probs[keep][worst], "loss": losses[keep][worst]}
    paths = write_results(outdir, summary, table, dls.vocab, shown, training)
    log(summary_table(summary, seed=seed))
    return summary, paths


def _valid_images(dls, indices) -> np.ndarray:
    """uint8 [len(indices), size, size, 3]: validation items `indices` (split order) as the model saw them."""
    wanted = {int(i): k for k, i in enumerate(indices)}
    out = np.zeros((len(wanted), dls.size, dls.size, 3), np.uint8)
    start = 0
    for batch in dataclasses.replace(dls, process_index=0, process_count=1).valid():
        for j in range(int(np.sum(batch["mask"]))):
            if start + j in wanted:
                out[wanted[start + j]] = batch["image"][j]
        start += len(batch["mask"])
        if start > max(wanted, default=-1):
            break
    return out


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


def log_outputs(outdir: Path, paths: Sequence[Path], log: Callable[[str], None]) -> None:
    """One closing line: where the outputs are and which they are."""
    log(f"outputs in {outdir}: {', '.join(str(Path(p).relative_to(outdir)) for p in paths)}")
