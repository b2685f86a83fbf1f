"""PNG plots of a run: threshold curve, per-class AP bars, lr_find curve.

matplotlib is imported lazily, and only its object-oriented API is used (a Figure rendered by
the Agg canvas), so no pyplot state or interactive backend is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pml_jax.errors import PmlError


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


def _ap_figure(vocab: Sequence[str], ap):
    values = _vector(ap, "ap", len(vocab))
    defined = ~np.isnan(values)
    fig, ax = _new_figure(max(6, 0.4 * len(vocab)), 4)
    ax.bar(np.flatnonzero(defined), values[defined], color="tab:blue")
    for i in np.flatnonzero(~defined):
        ax.text(i, 0.01, "n/a", ha="center", va="bottom", rotation=90, color="gray")
    if defined.any():
        mean = values[defined].mean()
        ax.axhline(mean, color="red", linestyle="--", label=f"mAP {mean:.3f}")
        ax.legend()
    ax.set_xticks(range(len(vocab)), list(vocab), rotation=90)
    ax.set(ylim=(0, 1), ylabel="average precision", title="per-class AP (n/a: no positives)")
    return fig


def plot_per_class_ap(vocab: Sequence[str], ap, path) -> Path:
    """Bar chart of per-class AP [C] (NaN shown as n/a) with the mAP line. Writes a PNG."""
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
