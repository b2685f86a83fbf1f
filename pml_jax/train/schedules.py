"""fastai's per-step hyper-parameter schedules (one-cycle, fine_tune, lr_find), the global step
numbering of a plan of phases, the smoothed training loss and lr_find's stop rule and suggestions.
Host-side numpy: the arrays feed the jitted step one row per training step (learning rates in
1/step units of the optimizer, float64 here).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple, Sequence

import numpy as np

from pml_jax.errors import PmlError
from pml_jax.train.groups import lr_range


def _sched_cos(start, end, pos):
    """fastai `sched_cos`: cosine from `start` (pos 0) to `end` (pos 1)."""
    return start + (1 + np.cos(np.pi * (1 - pos))) * (end - start) / 2


def _combined_cos(pos: np.ndarray, pct: float, start, middle, end) -> np.ndarray:
    """fastai `combined_cos(pct, start, middle, end)` at positions ``pos`` [n] in [0, 1).

    Shapes: start/middle/end scalars or [G] -> result [n] or [n, G]. As fastai's `combine_scheds`,
    the phase boundaries and the position inside a phase are float32 (a torch tensor there).
    """
    pcts = np.cumsum(np.array([0.0, pct, 1.0 - pct], dtype=np.float32))
    pos32 = np.asarray(pos, dtype=np.float32)
    idx = np.minimum((pos32[:, None] >= pcts[None, :]).sum(axis=1) - 1, len(pcts) - 2)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero-length phase is never selected
        actual = ((pos32 - pcts[idx]) / (pcts[idx + 1] - pcts[idx])).astype(np.float64)
    start, middle, end = (np.asarray(v, dtype=np.float64) for v in (start, middle, end))
    first = idx == 0
    if start.ndim:
        actual, first = actual[:, None], first[:, None]
    return np.where(first, _sched_cos(start, middle, actual), _sched_cos(middle, end, actual))


def one_cycle(
    n_steps: int,
    lr_max,
    pct_start: float = 0.25,
    div: float = 25.0,
    div_final: float = 1e5,
    moms: tuple[float, float, float] = (0.95, 0.85, 0.95),
) -> tuple[np.ndarray, np.ndarray]:
    """fastai `fit_one_cycle` schedule: (lrs [n_steps, n_groups], moms [n_steps]).

    lr: cosine lr_max/div -> lr_max over pct_start of the steps, then cosine -> lr_max/div_final;
    mom: moms[0] -> moms[1] -> moms[2] likewise. Step i uses position i/n_steps, as fastai's
    ParamScheduler sets the hypers before each batch from `pct_train`.
    lr_max: anything `groups.lr_range` takes (float, slice, per-group values).
    """
    if n_steps < 0 or not 0.0 <= pct_start <= 1.0:
        raise PmlError(f"one_cycle: need n_steps >= 0 and 0 <= pct_start <= 1, got {n_steps}, {pct_start}")
    lr_max = lr_range(lr_max)
    pos = np.arange(n_steps, dtype=np.float64) / max(n_steps, 1)
    lrs = _combined_cos(pos, pct_start, lr_max / div, lr_max, lr_max / div_final)
    mom = _combined_cos(pos, pct_start, *moms)
    return lrs.reshape(n_steps, len(lr_max)), mom


class Phase(NamedTuple):
    """One `fit_one_cycle` call of a plan: freeze state, length and per-step hypers."""

    frozen: bool  # body frozen (except BatchNorm) for this phase
    epochs: int
    steps_per_epoch: int
    lrs: np.ndarray  # [epochs*steps_per_epoch, n_groups]
    moms: np.ndarray  # [epochs*steps_per_epoch]

    @property
    def n_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def phase_starts(phases: Sequence[Phase]) -> list[int]:
    """The global step at which each phase starts, then the plan's total: [0, n0, n0 + n1, ...]."""
    return [0, *itertools.accumulate(p.n_steps for p in phases)]


def locate_step(phases: Sequence[Phase], step: int) -> tuple[int, int]:
    """(phase index, steps done in it) of global step `step` of the plan `phases`.

    A step at a phase's end is the start of the next phase (which begins with a fresh optimizer
    state); the plan's total steps give (len(phases), 0): nothing left to run.
    """
    starts = phase_starts(phases)
    if not 0 <= step <= starts[-1]:
        raise PmlError(f"step {step} is outside this schedule of {starts[-1]} steps: "
                       "resume with the schedule of the interrupted run")
    p = next((p for p in range(len(phases)) if step < starts[p + 1]), len(phases))
    return p, step - starts[p]


def fine_tune_plan(
    epochs: int,
    steps_per_epoch: int,
    base_lr: float = 2e-3,
    freeze_epochs: int = 1,
    lr_mult: float = 100,
    pct_start: float = 0.3,
    div: float = 5.0,
) -> list[Phase]:
    """fastai `Learner.fine_tune` as two phases, each starting with a fresh optimizer state.

    1. frozen: one-cycle over freeze_epochs at slice(base_lr), pct_start 0.99 (div 25).
    2. unfrozen: base_lr /= 2; one-cycle over epochs at slice(base_lr/lr_mult, base_lr), pct_start, div.
    """
    phase1 = one_cycle(freeze_epochs * steps_per_epoch, slice(base_lr), pct_start=0.99)
    base_lr /= 2
    phase2 = one_cycle(
        epochs * steps_per_epoch, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, div=div
    )
    return [
        Phase(True, freeze_epochs, steps_per_epoch, *phase1),
        Phase(False, epochs, steps_per_epoch, *phase2),
    ]


def lr_find_schedule(start_lr=1e-7, end_lr=10.0, num_it: int = 100) -> np.ndarray:
    """fastai `LRFinder` lrs: step i of max(num_it, 6) uses start*(end/start)**(i/num_it).

    Shape [n] for scalar start/end, [n, G] for per-group values.
    """
    n = max(num_it, 6)
    start, end = np.asarray(start_lr, np.float64), np.asarray(end_lr, np.float64)
    pos = (np.arange(n) / n).reshape((n,) + (1,) * start.ndim)
    return start * (end / start) ** pos


SMOOTH_BETA = 0.98  # fastai's AvgSmoothLoss


@dataclasses.dataclass
class SmoothLoss:
    """fastai `AvgSmoothLoss`: the debiased exponential moving average of the training losses.

    `dataclasses.asdict(s)` is JSON and `SmoothLoss(**that)` continues exactly where `s` was.
    """

    total: float = 0.0  # the biased average
    count: int = 0  # losses added
    beta: float = SMOOTH_BETA

    def add(self, loss: float) -> float:
        """Add one step's loss; returns the new smoothed value."""
        self.total = self.beta * self.total + (1 - self.beta) * float(loss)
        self.count += 1
        return self.value

    @property
    def value(self) -> float:
        """The smoothed loss (NaN before the first loss)."""
        return self.total / (1 - self.beta**self.count) if self.count else math.nan


def smooth_losses(losses: Sequence[float], beta: float = SMOOTH_BETA) -> np.ndarray:
    """`SmoothLoss` after each of `losses` [n], as fastai's Recorder plots it."""
    smoother = SmoothLoss(beta=beta)
    return np.array([smoother.add(loss) for loss in losses], dtype=np.float64)


def lr_find_should_stop(smoothed: Sequence[float], num_it: int = 100) -> bool:
    """fastai `LRFinder.after_batch` after len(smoothed) steps: stop when the newest smoothed loss
    exceeds 4x the best so far (NaNs never count as best), or after max(num_it, 6) steps."""
    best = math.inf
    for value in smoothed:
        if value < best:
            best = value
    return bool(smoothed[-1] > 4 * best) or len(smoothed) >= max(num_it, 6)


def _valley(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, tuple[float, float]]:
    """fastai `valley`: the middle-ish of the longest decreasing run (longest-decreasing-subsequence)."""
    n = len(losses)
    max_start = max_end = 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx]), (float(lrs[idx]), float(losses[idx]))


def _slide(lrs, losses, lr_diff: int = 15, thresh: float = 0.005, adjust_value: float = 1.0):
    """fastai `slide`: walk left while the loss gradient keeps changing by more than `thresh`."""
    loss_grad = np.gradient(losses)
    r_idx, l_idx = -1, -1 - lr_diff
    local_min_lr = lrs[l_idx]
    while l_idx >= -len(losses) and abs(loss_grad[r_idx] - loss_grad[l_idx]) > thresh:
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    suggestion = float(local_min_lr) * adjust_value
    return suggestion, (suggestion, float(np.interp(np.log10(suggestion), np.log10(lrs), losses)))


def _loss_nearest(lrs: np.ndarray, losses: np.ndarray, lr: float) -> float:
    return float(losses[int(np.argmin(np.abs(lrs - lr)))])


def _minimum(lrs, losses):
    """fastai `minimum`: a tenth of the lr at the lowest loss."""
    lr_min = float(lrs[np.argmin(losses)])
    return lr_min / 10, (lr_min, _loss_nearest(lrs, losses, lr_min))


def _steep(lrs, losses):
    """fastai `steep`: the lr where the loss falls fastest per log-lr."""
    grads = np.diff(losses) / np.diff(np.log(lrs))
    lr_steep = float(lrs[np.argmin(grads)])
    return lr_steep, (lr_steep, _loss_nearest(lrs, losses, lr_steep))


SUGGESTIONS = {"valley": _valley, "slide": _slide, "minimum": _minimum, "steep": _steep}


def lr_find_suggestion(
    lrs: Sequence[float], smoothed: Sequence[float], num_it: int = 100, method: str = "valley"
) -> tuple[float, tuple[float, float]]:
    """fastai `lr_find` suggestion from the recorded lrs and smoothed losses (one per step run).

    As fastai: drop the first num_it//10 and the last 5 records, cut at the first NaN, then apply
    `method` ('valley', 'slide', 'minimum', 'steep'). Returns (suggested lr, (plot lr, plot loss)).
    """
    if method not in SUGGESTIONS:
        raise PmlError(f"unknown lr_find suggestion {method!r}; choose from {sorted(SUGGESTIONS)}")
    lrs = np.asarray(lrs, np.float64)[num_it // 10 : -5]
    losses = np.asarray(smoothed, np.float64)[num_it // 10 : -5]
    nans = np.flatnonzero(np.isnan(losses))
    if len(nans):
        lrs, losses = lrs[: nans[0]], losses[: nans[0]]
    if len(losses) < 2:
        raise PmlError(f"lr_find recorded {len(smoothed)} steps: too few for a suggestion (num_it={num_it})")
    return SUGGESTIONS[method](lrs, losses)
