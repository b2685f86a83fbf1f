"""Schedules (one-cycle, fine_tune, lr_find), step numbering, the smoothed loss and lr_find's
suggestions against fastai 2.8."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pml_jax.errors import PmlError
from pml_jax.train.schedules import (
    Phase,
    SmoothLoss,
    fine_tune_plan,
    locate_step,
    lr_find_schedule,
    lr_find_should_stop,
    lr_find_suggestion,
    one_cycle,
    phase_starts,
    smooth_losses,
)

REF = pathlib.Path(__file__).parent / "fixtures" / "fastai"
METHODS = ("valley", "slide", "minimum", "steep")  # the fixture's column order


def test_fine_tune_plan_matches_fastai_every_step():
    ref = np.load(REF / "fine_tune.npz")
    plan = fine_tune_plan(3, 5, base_lr=3e-3, freeze_epochs=4)
    assert [(p.frozen, p.epochs, p.steps_per_epoch) for p in plan] == [(True, 4, 5), (False, 3, 5)]
    lrs = np.concatenate([p.lrs for p in plan])
    moms = np.concatenate([p.moms for p in plan])
    np.testing.assert_allclose(lrs, ref["lr"], rtol=1e-12, atol=0)
    np.testing.assert_allclose(moms, ref["mom"][:, 0], rtol=1e-12, atol=0)
    # fastai freeze_to(-1) leaves frozen_idx 2 in phase 1, unfreeze sets it to 0
    np.testing.assert_array_equal(ref["frozen_idx"] == 2, np.repeat([p.frozen for p in plan], [20, 15]))


def test_fine_tune_defaults_follow_fastai():
    frozen, unfrozen = fine_tune_plan(2, 10)  # base_lr 2e-3, freeze_epochs 1, lr_mult 100, div 5
    np.testing.assert_allclose(frozen.lrs[0], np.array([2e-4, 2e-4, 2e-3]) / 25)
    np.testing.assert_allclose(unfrozen.lrs[0], np.array([1e-5, 1e-4, 1e-3]) / 5)
    assert frozen.lrs.shape == (10, 3) and unfrozen.lrs.shape == (20, 3)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 300),
    pct=st.floats(0.05, 0.95),
    div=st.floats(2.0, 100.0),
    div_final=st.floats(10.0, 1e6),
    lr=st.floats(1e-6, 1.0),
)
def test_one_cycle_shape_and_landmarks(n, pct, div, div_final, lr):
    lrs, moms = one_cycle(n, slice(lr / 100, lr), pct_start=pct, div=div, div_final=div_final)
    assert lrs.shape == (n, 3) and moms.shape == (n,)
    lr_max = np.array([lr / 100, lr / 10, lr])
    np.testing.assert_allclose(lrs[0], lr_max / div, rtol=1e-12)
    np.testing.assert_allclose(moms[0], 0.95, rtol=1e-12)
    peak = int(np.argmax(lrs[:, 2]))
    assert abs(peak / n - pct) <= 1 / n + 1e-6  # the peak sits at pct_start of the steps
    assert np.all(np.diff(lrs[: peak + 1], axis=0) >= 0) and np.all(np.diff(lrs[peak:], axis=0) <= 0)
    assert np.all(lrs <= lr_max * (1 + 1e-12)) and np.all(lrs[-1] >= lr_max / div_final * (1 - 1e-9))
    assert np.all((moms >= 0.85 - 1e-12) & (moms <= 0.95 + 1e-12))
    # beta1 follows the same cosine shape, mirrored: 0.95 -> 0.85 while lr warms up, back while it anneals
    warm = np.arange(n) / n <= pct
    top = lr_max[2]
    up = (lrs[:, 2] - top / div) / (top - top / div)
    down = (top - lrs[:, 2]) / (top - top / div_final)
    np.testing.assert_allclose(np.where(warm, (0.95 - moms) / 0.1, (moms - 0.85) / 0.1),
                               np.where(warm, up, down), atol=1e-6)
    np.testing.assert_allclose(lrs[:, 0] / lrs[:, 2], 1 / 100, rtol=1e-9)  # one shape, scaled per group


def test_one_cycle_edge_cases():
    lrs, moms = one_cycle(0, 1e-3)
    assert lrs.shape == (0, 3) and moms.shape == (0,)
    lrs, _ = one_cycle(4, 1e-3, pct_start=0.0)  # no warm-up: starts at lr_max and anneals
    np.testing.assert_allclose(lrs[0], 1e-3)
    lrs, _ = one_cycle(4, 1e-3, pct_start=1.0)  # warm-up only
    assert np.all(np.diff(lrs[:, 0]) > 0)
    with pytest.raises(PmlError):
        one_cycle(4, 1e-3, pct_start=1.5)


def test_global_steps_locate_their_phase_and_a_phase_end_starts_the_next():
    plan = [Phase(True, 2, 3, *one_cycle(6, 1e-3)), Phase(False, 0, 3, *one_cycle(0, 1e-3)),
            Phase(False, 1, 3, *one_cycle(3, 1e-3))]
    assert phase_starts(plan) == [0, 6, 6, 9]
    assert [locate_step(plan, s) for s in (0, 5, 6, 8, 9)] == [(0, 0), (0, 5), (2, 0), (2, 2), (3, 0)]
    with pytest.raises(PmlError, match="step 10 is outside this schedule of 9 steps"):
        locate_step(plan, 10)


def test_lr_find_schedule():
    lrs = lr_find_schedule()
    assert lrs.shape == (100,) and lrs[0] == 1e-7
    np.testing.assert_allclose(lrs[-1], 1e-7 * (1e8) ** 0.99, rtol=1e-12)
    assert lr_find_schedule(num_it=3).shape == (6,)  # fastai runs at least 6 steps
    per_group = lr_find_schedule([1e-6, 1e-5, 1e-4], [1e-2, 1e-1, 1.0], num_it=10)
    assert per_group.shape == (10, 3)
    np.testing.assert_allclose(per_group[5], [1e-4, 1e-3, 1e-2], rtol=1e-12)


def simulate_lr_find(raw, num_it, start_lr, end_lr):
    """Our loop as the learner runs it: record, smooth, stop."""
    lrs, smoother, smoothed = lr_find_schedule(start_lr, end_lr, num_it), SmoothLoss(), []
    for k, loss in enumerate(raw[: len(lrs)], start=1):
        smoothed.append(smoother.add(loss))
        if lr_find_should_stop(smoothed, num_it):
            return lrs[:k], np.array(smoothed)
    raise AssertionError("lr_find never stopped")


@pytest.mark.parametrize("case", ["diverge", "full", "nan"])
def test_lr_find_matches_fastai(case):
    ref = np.load(REF / "lr_find.npz")
    num_it, start_lr, end_lr = ref[f"{case}/args"]
    num_it = int(num_it)
    lrs, smoothed = simulate_lr_find(ref[f"{case}/raw"], num_it, start_lr, end_lr)
    assert len(lrs) == len(ref[f"{case}/lrs"])  # same stop step (divergence or num_it)
    np.testing.assert_allclose(lrs, ref[f"{case}/lrs"], rtol=1e-12)
    np.testing.assert_allclose(smoothed, ref[f"{case}/losses"], rtol=2e-6, equal_nan=True)
    for col, method in enumerate(METHODS):
        # on fastai's own recorded (float32) losses, and on ours
        for losses in (ref[f"{case}/losses"], smoothed):
            lr, point = lr_find_suggestion(lrs, losses, num_it, method)
            np.testing.assert_allclose(lr, ref[f"{case}/suggestions"][col], rtol=1e-6)
        if f"{case}/points" in ref:
            lr, point = lr_find_suggestion(lrs, ref[f"{case}/losses"], num_it, method)
            np.testing.assert_allclose(point, ref[f"{case}/points"][col], rtol=1e-6)


def test_smooth_losses_is_debiased_ema():
    np.testing.assert_allclose(smooth_losses([2.0, 2.0, 2.0]), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(smooth_losses([1.0, 3.0], beta=0.5), [1.0, (0.5 * 0.5 + 0.5 * 3.0) / 0.75])


def test_smooth_loss_continues_exactly_from_its_json_state():
    losses = np.random.default_rng(0).random(50) * 3
    assert np.isnan(SmoothLoss().value)
    first = SmoothLoss()
    for loss in losses[:17]:
        first.add(loss)
    saved = json.loads(json.dumps(dataclasses.asdict(first)))  # as a checkpoint's meta keeps it
    resumed = SmoothLoss(**saved)
    np.testing.assert_array_equal([resumed.add(loss) for loss in losses[17:]], smooth_losses(losses)[17:])


def test_should_stop_rule():
    assert not lr_find_should_stop([1.0, 0.5, 1.9], 100)
    assert lr_find_should_stop([1.0, 0.5, 2.1], 100)  # > 4 x best so far
    assert not lr_find_should_stop([np.nan, 1.0, np.nan], 100)  # NaN neither best nor diverged
    assert lr_find_should_stop([1.0] * 6, 3)  # at least 6 steps, then num_it


def test_suggestion_errors():
    lrs, losses = lr_find_schedule(num_it=20), np.linspace(1, 0, 20)
    with pytest.raises(PmlError, match="unknown"):
        lr_find_suggestion(lrs, losses, 20, "fastest")
    with pytest.raises(PmlError, match="too few"):
        lr_find_suggestion(lrs[:7], losses[:7], 20)
