"""PNG plots of a run: loss curve, threshold curve, per-class AP bars, lr_find curve, image grids
(show_batch, top losses).

matplotlib is imported lazily, and only its object-oriented API is used (a Figure rendered by
the Agg canvas), so no pyplot state or interactive backend is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pml_jax.errors import PmlError

NO_LABELS = "(none)"  # the title of an image without labels
LABEL_SEP = ";"  # joins an image's labels in titles, as fastai's show_batch does
PHASE_START_LABEL = "unfreeze"  # marks a phase start on loss.png: after fine_tune's frozen phase


def _vector(values, name: str, n: int | None = None) -> np.ndarray:
    """values as float64 [n]; PmlError naming `name` if not 1-D or of the wrong length."""
    arr = np.asarray(values, np.float64)
    if arr.ndim != 1 or (n is not None and arr.size != n):
        want = f"[{n}]" if n is not None else "a 1-D array"
        raise PmlError(f"{name}: expected {want}, got shape {arr.shape}")
    return arr


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise PmlError(f"cannot write plot {path}: {e}") from e
    return path


def _threshold_figure(thresholds, curves: Mapping[str, Sequence[float]], chosen: float):
    xs = _vector(thresholds, "thresholds")
    fig, ax = _new_figure(6, 4)
    i = int(np.argmin(np.abs(xs - chosen)))
    for name, values in curves.items():
        ys = _vector(values, f"curve {name!r}", xs.size)
        (line,) = ax.plot(xs, ys, label=name)
        ax.plot([xs[i]], [ys[i]], "o", color=line.get_color())
    ax.axvline(chosen, color="red", linestyle="--", label=f"chosen {chosen:.3g}")
    ax.set(xlabel="threshold", ylabel="metric", title="metrics vs threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_threshold_curve(thresholds, curves: Mapping[str, Sequence[float]], chosen: float, path) -> Path:
    """Metric vs threshold lines (curves: name -> [T] values at thresholds [T]), `chosen` marked. Writes a PNG."""
    return _save(_threshold_figure(thresholds, curves, float(chosen)), path)


def _ap_floor(defined: np.ndarray) -> float:
    """x-axis start for AP values: a bit below the smallest, rounded down to 0.05, never below 0."""
    if defined.size == 0:
        return 0.0
    return max(0.0, round(float(np.floor((defined.min() - 0.01) / 0.05)) * 0.05, 2))


def _ap_figure(vocab: Sequence[str], ap):
    values = _vector(ap, "ap", len(vocab))
    order = np.argsort(np.where(np.isnan(values), np.inf, -values), kind="stable")  # best first, n/a last
    values, names = values[order], [vocab[i] for i in order]
    defined = ~np.isnan(values)
    lo = _ap_floor(values[defined])
    fig, ax = _new_figure(6, max(3.5, 1 + 0.3 * len(vocab)))
    rows = np.arange(len(vocab))  # row 0 at the top
    ax.barh(rows[defined], values[defined] - lo, left=lo, color="tab:blue")
    for y, v in zip(rows, values):
        inside = defined[y] and v - lo > 0.15 * (1 - lo)
        x, text = (v, f"{v:.3f} ") if defined[y] else (lo, " n/a")
        ax.text(x, y, text, va="center", ha="right" if inside else "left", fontsize=8,
                color="white" if inside else ("black" if defined[y] else "gray"))
    if defined.any():
        mean = values[defined].mean()
        ax.axvline(mean, color="red", linestyle="--", label=f"mAP {mean:.3f}")
        ax.legend(loc="lower left")  # over the bars' starts; their values are written at their ends
    ax.set_yticks(rows, names)
    note = " (n/a: no positives)" if not defined.all() else ""
    ax.set(xlim=(lo, 1), ylim=(len(vocab) - 0.4, -0.6), xlabel="average precision", title=f"per-class AP{note}")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_per_class_ap(vocab: Sequence[str], ap, path) -> Path:
    """Horizontal bars of per-class AP [C], sorted best first, each with its value (NaN shown as n/a)
    and the mAP line; the AP axis starts just below the smallest AP. Writes a PNG."""
    return _save(_ap_figure(vocab, ap), path)


def _lr_find_figure(lrs, losses, suggestion, skip_end: int):
    xs = _vector(lrs, "lrs")
    ys = _vector(losses, "losses", xs.size)
    if np.any(xs <= 0):
        raise PmlError(f"lrs: learning rates must be > 0 for a log axis, got min {xs.min()}")
    keep = slice(None, -skip_end if 0 < skip_end < xs.size else None)
    xs, ys = xs[keep], ys[keep]
    fig, ax = _new_figure(6, 4)
    ax.plot(xs, ys)
    marks = {"suggestion": suggestion} if not isinstance(suggestion, Mapping) else dict(suggestion)
    for name, lr in marks.items():
        if lr is None:
            continue
        loss = np.interp(np.log(lr), np.log(xs), ys)
        ax.plot([lr], [loss], "o", markersize=8, label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="loss (smoothed)", title="lr_find")
    ax.grid(alpha=0.3, which="both")
    if any(v is not None for v in marks.values()):
        ax.legend()
    return fig


def plot_lr_find(lrs, losses, suggestion, path, skip_end: int = 5) -> Path:
    """Loss vs learning rate on a log x axis, like fastai's plot_lr_find (drops the last `skip_end` points).

    lrs, losses: [K]; suggestion: a learning rate, a mapping name -> lr (e.g. {'valley': 1e-3}) or None.
    Writes a PNG.
    """
    return _save(_lr_find_figure(lrs, losses, suggestion, skip_end), path)


def _smoothed(xs: np.ndarray, ys: np.ndarray, starts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """fastai's smoothed train loss, restarted at each phase start as the learner does (a NaN gap
    between phases breaks the line there); NaN losses skipped."""
    from pml_jax.train.schedules import smooth_losses

    cuts = np.searchsorted(xs, sorted(starts), side="right")
    out_x, out_y = [], []
    for x, y in zip(np.split(xs, cuts), np.split(ys, cuts)):
        keep = np.isfinite(y)
        out_x += [x[keep], [np.nan]]
        out_y += [smooth_losses(y[keep]), [np.nan]]
    return np.concatenate(out_x[:-1]).astype(np.float64), np.concatenate(out_y[:-1])


def _loss_figure(step_losses, epoch_ends, valid_losses, phase_starts: Sequence[int]):
    ys = _vector(step_losses, "step_losses")
    ends = _vector(epoch_ends, "epoch_ends")
    valid = _vector(valid_losses, "valid_losses", ends.size)
    xs = np.arange(1, ys.size + 1)  # steps done after each loss, the unit of epoch_ends
    fig, ax = _new_figure(7, 4)
    keep = np.isfinite(ys)
    ax.plot(xs[keep], ys[keep], color="tab:blue", alpha=0.3, linewidth=0.8, label="train (per step)")
    ax.plot(*_smoothed(xs, ys, phase_starts), color="tab:blue", label="train (smoothed)")
    keep = np.isfinite(valid)
    ax.plot(ends[keep], valid[keep], "o-", color="tab:orange", label="valid")
    for step in phase_starts:
        ax.axvline(step, color="gray", linestyle=":")
        ax.annotate(PHASE_START_LABEL, (step, 1), xycoords=ax.get_xaxis_transform(), xytext=(3, -3),
                    textcoords="offset points", va="top", color="gray")
    ax.set(xlabel="global step", ylabel="loss", title="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_loss(step_losses, epoch_ends, valid_losses, path, phase_starts: Sequence[int] = ()) -> Path:
    """fastai's `recorder.plot_loss`: train loss of every step (raw and smoothed) vs global step, and
    the valid loss at each epoch's end. Writes a PNG.

    step_losses: [S] (the loss after step s is drawn at x = s + 1); epoch_ends: [E] global steps done
    at each epoch's end; valid_losses: [E]; phase_starts: global steps where a later phase begins
    (fine_tune's unfreeze), each a dotted vertical line labelled PHASE_START_LABEL. NaNs are left out.
    """
    return _save(_loss_figure(step_losses, epoch_ends, valid_losses, [int(s) for s in phase_starts]), path)


def label_text(active, vocab: Sequence[str]) -> str:
    """bool [C] -> the active classes of `vocab` joined by LABEL_SEP, in vocab order; NO_LABELS if none."""
    return LABEL_SEP.join(vocab[j] for j in np.flatnonzero(active)) or NO_LABELS


def _image_grid_figure(images, titles: Sequence[str], nrows: int, ncols: int,
                       colors: Sequence[str] | None = None):
    """images: N (<= nrows * ncols) uint8 [H, W, 3], one title (and title colour) each, 3-inch cells."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * ncols, 3 * nrows), layout="constrained")
    for i, ax in enumerate(fig.subplots(nrows, ncols, squeeze=False).ravel()):
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(np.asarray(images[i]))
            ax.set_title(titles[i], fontsize=9, color=colors[i] if colors else "black")
    return fig


def plot_image_grid(images, titles: Sequence[str], path, nrows: int, ncols: int,
                    colors: Sequence[str] | None = None) -> Path:
    """Write images (uint8 [N, H, W, 3], N <= nrows * ncols) with their titles as a grid PNG."""
    return _save(_image_grid_figure(images, titles, nrows, ncols, colors), path)


def _top_losses(targets, probs, losses, n_vocab: int, n_images: int, k: int):
    """Checked inputs -> (multi-hot bool [N, C], probs [N, C], losses [N], the k worst item ids)."""
    losses = _vector(losses, "losses", n_images)
    targets, probs = np.asarray(targets) > 0.5, np.asarray(probs, np.float64)
    for name, arr in (("targets", targets), ("probs", probs)):
        if arr.shape != (losses.size, n_vocab):
            raise PmlError(f"{name}: expected [{losses.size}, {n_vocab}] (items, vocab), got {arr.shape}")
    order = np.argsort(-losses, kind="stable")
    worst = order[np.isfinite(losses[order])][:k]
    if worst.size == 0:
        raise PmlError("top losses: no item has a finite loss")
    return targets, probs, losses, worst


def _top_losses_figure(images, targets, probs, losses, vocab: Sequence[str], thresh: float, k: int, ncols: int):
    if k < 1 or ncols < 1:
        raise PmlError(f"top losses: k and ncols must be >= 1, got k={k}, ncols={ncols}")
    truth, probs, losses, worst = _top_losses(targets, probs, losses, len(vocab), len(images), k)
    titles, colors = [], []
    for i in worst:
        pred = probs[i] > thresh
        titles.append(f"true: {label_text(truth[i], vocab)}\npred: {label_text(pred, vocab)}\n"
                      f"loss {losses[i]:.3f}")
        colors.append("black" if np.array_equal(pred, truth[i]) else "red")
    nrows = -(-worst.size // ncols)
    return _image_grid_figure([images[i] for i in worst], titles, nrows, ncols, colors)


def plot_top_losses(images, targets, probs, losses, vocab: Sequence[str], thresh: float, path,
                    k: int = 9, ncols: int = 3) -> Path:
    """fastai's `plot_top_losses` for multi-label: the k items of highest loss, worst first, titled
    with true labels, predicted labels (probs > thresh) and loss; red when the two sets differ.

    images: N uint8 [H, W, 3] (an array or any sequence; only the k shown are read);
    targets: multi-hot [N, C]; probs: [N, C]; losses: per-item loss [N] (NaN items skipped). Writes a PNG.
    """
    return _save(_top_losses_figure(images, targets, probs, losses, vocab, float(thresh), k, ncols), path)
