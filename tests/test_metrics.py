"""pml_jax.metrics against fastai 2.8 / scikit-learn reference numbers, plus properties and streaming."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pml_jax.errors import PmlError
from pml_jax.metrics import (
    DEFAULT_THRESHOLDS,
    accuracy_multi,
    apply_thresholds,
    average_precision,
    epoch_metrics,
    hamming_loss,
    mean_average_precision,
    per_class_thresholds,
    precision_recall_f1,
    threshold_sweep,
    voc07_average_precision,
)
from pml_jax.metrics.classification import _accuracy_multi
from pml_jax.metrics.sweep import cutoffs_below

TOL = dict(rtol=0, atol=1e-6)
CASES = ("random", "tied")
NO_POS, ALL_POS = 5, 6  # fixture classes without / with only positives
PROPS = settings(max_examples=20, deadline=None, derandomize=True)


REFERENCE = pathlib.Path(__file__).parent / "fixtures" / "metrics" / "reference.npz"


@pytest.fixture(scope="module")
def ref():
    """Arrays written by tests/fixtures/metrics/generate.py (fastai 2.8.12, scikit-learn 1.9.1)."""
    with np.load(REFERENCE) as z:
        return dict(z)


# ---------------------------------------------------------------- reference numbers


@pytest.mark.parametrize("case", CASES)
def test_accuracy_multi_matches_fastai(ref, case):
    probs, targs = ref[f"{case}_probs"], ref["targs"]
    ours = [accuracy_multi(probs, targs, thresh=t, sigmoid=False) for t in ref["thresholds"]]
    np.testing.assert_allclose(ours, ref[f"{case}_acc_probs"], **TOL)
    if case == "random":
        ours = [accuracy_multi(ref["logits"], targs, thresh=t) for t in ref["thresholds"]]
        np.testing.assert_allclose(ours, ref["random_acc_logits"], **TOL)


def test_accuracy_multi_strict_cutoff_and_bool_targets():
    # a score equal to the cutoff is "not predicted"; any non-zero target is a positive
    assert float(accuracy_multi(np.float32([[0.5, 0.7]]), np.float32([[0, 2]]), 0.5, sigmoid=False)) == 1.0
    assert float(accuracy_multi(np.float32([[0.0]]), np.float32([[1]]), 0.5)) == 0.0  # sigmoid(0) = 0.5


def test_accuracy_multi_traces_thresh_once():
    x = np.random.default_rng(0).random((9, 4), np.float32)
    y = x > 0.5
    before = _accuracy_multi._cache_size()
    for t in (0.1, 0.2, 0.3, 0.7):
        accuracy_multi(x, y, t, sigmoid=False)
    assert _accuracy_multi._cache_size() - before == 1


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["bucket", "compare"])
def test_sweep_matches_fastbook_loop(ref, case, method):
    probs, targs, grid = ref[f"{case}_probs"], ref["targs"], ref["sweep_thresholds"]
    curve, best_t, best_v = threshold_sweep(probs, targs, grid, method=method)
    expected = ref[f"{case}_sweep"]
    np.testing.assert_allclose(curve, expected, **TOL)
    first_best = int(np.flatnonzero(expected == expected.max())[0])
    assert float(best_t) == ref["sweep_thresholds"][first_best]
    assert float(best_v) == pytest.approx(expected.max(), abs=1e-6)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("average", ["micro", "macro", "samples"])
def test_precision_recall_f1_match_sklearn(ref, case, average):
    probs, targs = ref[f"{case}_probs"], ref["targs"]
    for i, t in enumerate(ref["prf_thresholds"]):
        p, r, f1 = precision_recall_f1(probs, targs, thresh=t, average=average)
        np.testing.assert_allclose(p, ref[f"{case}_precision_{average}"][i], **TOL)
        np.testing.assert_allclose(r, ref[f"{case}_recall_{average}"][i], **TOL)
        np.testing.assert_allclose(f1, ref[f"{case}_f1_{average}"][i], **TOL)
        _, _, per_class = precision_recall_f1(probs, targs, thresh=t, average=None)
        np.testing.assert_allclose(per_class, ref[f"{case}_f1_none"][i], **TOL)
        np.testing.assert_allclose(hamming_loss(probs, targs, thresh=t), ref[f"{case}_hamming"][i], **TOL)


def test_f1_zero_division_is_zero():
    # nothing predicted, nothing true: sklearn's zero_division='warn' gives 0 for every average
    z = np.zeros((4, 3), np.float32)
    for average in ("micro", "macro", "samples"):
        assert [float(v) for v in precision_recall_f1(z, z, average=average)] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("case", CASES)
def test_average_precision_matches_sklearn(ref, case):
    probs, targs = ref[f"{case}_probs"], ref["targs"]
    ap = np.asarray(average_precision(probs, targs))
    has_pos = np.arange(ap.size) != NO_POS
    np.testing.assert_allclose(ap[has_pos], ref[f"{case}_ap"][has_pos], **TOL)
    # documented choice: NaN for a class without positives (sklearn 1.9 says 0.0 and warns)
    assert np.isnan(ap[NO_POS]) and ref[f"{case}_ap"][NO_POS] == 0.0
    assert ap[ALL_POS] == 1.0
    np.testing.assert_allclose(mean_average_precision(probs, targs), ref[f"{case}_ap"][has_pos].mean(), **TOL)


@pytest.mark.parametrize("case", CASES)
def test_voc07_ap_matches_devkit_formula(ref, case):
    probs, targs = ref[f"{case}_probs"], ref["targs"]
    voc = np.asarray(voc07_average_precision(probs, targs))
    np.testing.assert_allclose(voc, ref[f"{case}_voc07"], equal_nan=True, **TOL)
    np.testing.assert_allclose(
        mean_average_precision(probs, targs, voc07=True), np.nanmean(ref[f"{case}_voc07"]), **TOL
    )


def _ap_without_tie_groups(scores, truth):
    order = np.argsort(-scores, kind="stable")
    hits = truth[order] > 0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return precision[hits].sum() / hits.sum()


def test_tied_fixture_exercises_tie_grouping(ref):
    # the tied case would fail an implementation that ignores ties, so it really tests them
    probs, targs = ref["tied_probs"], ref["targs"]
    naive = [_ap_without_tie_groups(probs[:, c], targs[:, c]) for c in range(NO_POS)]
    assert np.abs(np.array(naive) - ref["tied_ap"][:NO_POS]).max() > 1e-3


def test_voc07_recall_exactly_on_a_step():
    # 10 positives; recall reaches exactly 0.3 at rank 3 with precision 1, then precision drops
    scores = np.linspace(1, 0, 40, dtype=np.float32)
    truth = np.zeros(40, np.float32)
    truth[[0, 1, 2, 20, 21, 22, 23, 24, 25, 26]] = 1
    got = float(voc07_average_precision(scores, truth)[0])
    prec = np.cumsum(truth) / np.arange(1, 41)
    rec = np.cumsum(truth) / 10
    expected = np.mean([prec[rec * 10 >= k].max() for k in range(11)])
    assert got == pytest.approx(expected, abs=1e-6)
    assert got > (3 + 8 * prec[rec * 10 >= 4].max()) / 11 - 1e-6  # t=0.3 counted with precision 1


# ---------------------------------------------------------------- sweep, per-class cutoffs


def test_sweep_ties_pick_lowest_threshold():
    probs = np.float32([[0.9, 0.05], [0.95, 0.01]])
    targs = np.float32([[1, 0], [1, 0]])
    curve, best_t, best_v = threshold_sweep(probs, targs, np.float32([0.1, 0.3, 0.5, 0.99]))
    np.testing.assert_allclose(curve, [1, 1, 1, 0.5])
    assert float(best_t) == pytest.approx(0.1) and float(best_v) == 1.0


def test_cutoffs_below_counts_strictly_lower_cutoffs():
    # binary search edge cases: grid sizes at and around powers of two, scores equal to cutoffs, NaN, +-inf
    levels = np.float32([-np.inf, 0, 0.1, 0.5, 0.9, 1, np.inf])
    for size in (1, 2, 3, 7, 8, 1000):
        rng = np.random.default_rng(size)
        grid = np.sort(np.concatenate([rng.choice(levels, size // 2), rng.random(size - size // 2)]))
        grid = grid.astype(np.float32)
        scores = np.concatenate([levels, [np.nan], grid, rng.random(40)]).astype(np.float32)
        got = np.asarray(jax.jit(cutoffs_below)(scores, grid))
        np.testing.assert_array_equal(got, (scores[:, None] > grid[None, :]).sum(axis=1), err_msg=str(size))


@pytest.mark.parametrize("metric", ["accuracy", "f1_samples"])  # per-class and per-row tables
def test_sweep_any_grid_order_duplicates_and_nan_cutoffs(metric):
    # the bucket method sorts the grid and maps back; a NaN cutoff is never exceeded, like '>'
    rng = np.random.default_rng(3)
    probs = rng.random((40, 3)).astype(np.float32)
    probs[::7, 1] = np.nan
    probs[::5, 2] = 0.5  # scores on a cutoff: strict '>' leaves them out
    truth = rng.random((40, 3)) < 0.4
    mask = np.arange(40) % 9 != 0
    grid = np.float32([0.5, 0.1, np.nan, 0.5, 0.3, -np.inf, np.inf, 0.0, 0.9, 0.3])
    curve, best_t, _ = threshold_sweep(probs, truth, grid, metric=metric, mask=mask)
    if metric == "accuracy":
        loop = [accuracy_multi(probs, truth, t, sigmoid=False, mask=mask) for t in grid]
    else:
        loop = [precision_recall_f1(probs, truth, t, average=metric[3:], mask=mask)[2] for t in grid]
    np.testing.assert_allclose(curve, loop, **TOL)
    np.testing.assert_array_equal(best_t, grid[int(np.argmax(loop))])  # NaN == NaN here


def _binary_f1(pred, truth):
    tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
    return 0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


@pytest.mark.parametrize("metric", ["f1", "accuracy"])
def test_per_class_thresholds_match_bruteforce(ref, metric):
    probs, truth = ref["random_probs"], ref["targs"] > 0
    grid = DEFAULT_THRESHOLDS
    got = np.asarray(per_class_thresholds(probs, truth, grid, metric=metric))
    for c in range(probs.shape[1]):
        pc = probs[:, c][None, :] > grid[:, None]
        if metric == "f1":
            scores = [_binary_f1(p, truth[:, c]) for p in pc]
        else:
            scores = [(p == truth[:, c]).mean() for p in pc]
        assert got[c] == grid[int(np.argmax(scores))], c
    decided = np.asarray(apply_thresholds(probs, got))
    np.testing.assert_array_equal(decided, probs > got[None, :])


def test_per_class_thresholds_separable_classes():
    probs = np.float32([[0.9, 0.2], [0.6, 0.25], [0.3, 0.1], [0.1, 0.05]])
    targs = np.float32([[1, 1], [1, 1], [0, 0], [0, 0]])
    cut = np.asarray(per_class_thresholds(probs, targs, np.float32([0.05, 0.15, 0.5, 0.8])))
    np.testing.assert_allclose(cut, [0.5, 0.15])


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: accuracy_multi(np.zeros((3, 2)), np.zeros((3, 4))), "(3, 2)"),
        (lambda: accuracy_multi(np.zeros((3, 2)), np.zeros((3, 2)), mask=np.ones(4, bool)), "(4,)"),
        (lambda: threshold_sweep(np.zeros((3, 2)), np.zeros((3, 2)), [], metric="accuracy"), "(0,)"),
        (lambda: threshold_sweep(np.zeros((3, 2)), np.zeros((3, 2)), [0.5], metric="auc"), "'auc'"),
        (lambda: precision_recall_f1(np.zeros((3, 2)), np.zeros((3, 2)), average="weighted"), "'weighted'"),
        (lambda: per_class_thresholds(np.zeros((3, 2)), np.zeros((3, 2)), metric="f2"), "'f2'"),
        (lambda: apply_thresholds(np.zeros((3, 2)), np.zeros(3)), "(3,)"),
        (lambda: average_precision(np.zeros((3, 2, 1)), np.zeros((3, 2, 1))), "(3, 2, 1)"),
    ],
)
def test_user_errors_name_the_value(call, needle):
    with pytest.raises(PmlError, match=None) as err:
        call()
    assert needle in str(err.value)


# ---------------------------------------------------------------- streaming


def test_epoch_metrics_of_padded_batches_gathered_on_device_ignore_the_padding(ref):
    probs, targs = ref["random_probs"], ref["targs"]
    batches = []
    for start in range(0, 64, 24):  # batches of 24 rows, the last one padded with garbage
        p, t = probs[start : start + 24], targs[start : start + 24]
        m = np.arange(24) < len(p)
        p = np.concatenate([p, np.full((24 - len(p), 7), np.nan, np.float32)])
        t = np.concatenate([t, np.ones((24 - len(t), 7), np.float32)])
        batches.append(tuple(jax.device_put(a) for a in (p, t, m)))
    with jax.transfer_guard_device_to_host("disallow"):  # gathered and scored without a host round-trip
        gathered = [jnp.concatenate(column) for column in zip(*batches)]
        on_device = epoch_metrics(*gathered, thresh=0.5)
    got = jax.device_get(on_device)
    assert isinstance(got["mAP"], np.ndarray)
    want = epoch_metrics(probs, targs, thresh=0.5)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], equal_nan=True, err_msg=key, **TOL)
    np.testing.assert_allclose(got["f1_samples"], ref["random_f1_samples"][1], **TOL)
    np.testing.assert_allclose(got["ap"], average_precision(probs, targs), equal_nan=True, **TOL)
    curve = threshold_sweep(probs, targs, DEFAULT_THRESHOLDS)[0]
    np.testing.assert_allclose(got["sweep_accuracy"], curve, **TOL)


def test_usable_inside_a_callers_jit(ref):
    probs, targs = ref["random_probs"], ref["targs"]

    @jax.jit
    def step(p, t, thresh):
        return accuracy_multi(p, t, thresh, sigmoid=False), threshold_sweep(p, t, DEFAULT_THRESHOLDS)[0]

    acc, curve = step(probs, targs, 0.2)
    np.testing.assert_allclose(acc, ref["random_acc_probs"][1], **TOL)
    np.testing.assert_allclose(curve, ref["random_sweep"], **TOL)


def test_import_needs_only_jax_and_numpy():
    code = (
        "import sys, pml_jax.metrics; "
        "bad = [m for m in ('tensorflow', 'flax', 'pandas', 'matplotlib', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})


# ---------------------------------------------------------------- properties

N, C = 12, 3
LEVELS = np.round(np.linspace(0, 1, 11), 1).astype(np.float32)  # few distinct scores -> many ties
score_arrays = hnp.arrays(
    np.float32,
    (N, C),
    elements=st.one_of(st.sampled_from(LEVELS), st.floats(0, 1, width=32)),
)
truth_arrays = hnp.arrays(np.bool_, (N, C))
grids = hnp.arrays(np.float32, 6, elements=st.sampled_from(LEVELS))


@PROPS
@given(
    hnp.arrays(
        np.float32,
        (N, C),
        elements=st.one_of(st.sampled_from(LEVELS), st.floats(0, 1, width=32), st.just(np.nan)),
    ),
    truth_arrays,
    grids,
    hnp.arrays(np.bool_, N),
    st.sampled_from(["accuracy", "f1_micro", "f1_macro", "f1_samples"]),
    st.sampled_from(["bucket", "compare"]),
)
def test_sweep_equals_per_threshold_loop(probs, truth, grid, mask, metric, method):
    # scores on the grid points test the strict '>'; NaN scores are never above a cutoff
    curve, best_t, best_v = threshold_sweep(probs, truth, grid, metric=metric, mask=mask, method=method)
    if metric == "accuracy":
        loop = [accuracy_multi(probs, truth, t, sigmoid=False, mask=mask) for t in grid]
    else:
        loop = [precision_recall_f1(probs, truth, t, average=metric[3:], mask=mask)[2] for t in grid]
    np.testing.assert_allclose(curve, loop, equal_nan=True, **TOL)
    if not np.isnan(curve).any():
        assert float(best_t) == grid[int(np.argmax(curve))] and float(best_v) == float(np.max(curve))
    per_class = per_class_thresholds(probs, truth, grid, metric="f1", mask=mask, method=method)
    table = np.array([precision_recall_f1(probs, truth, t, average=None, mask=mask)[2] for t in grid])
    np.testing.assert_array_equal(per_class, grid[np.argmax(table, axis=0)])


@PROPS
@given(score_arrays, truth_arrays)
def test_average_precision_in_unit_interval(scores, truth):
    for ap in (average_precision(scores, truth), voc07_average_precision(scores, truth)):
        ap = np.asarray(ap)
        has_pos = truth.any(axis=0)
        assert np.isnan(ap[~has_pos]).all()
        assert ((ap[has_pos] >= 0) & (ap[has_pos] <= 1 + 1e-6)).all()


@PROPS
@given(score_arrays, truth_arrays, hnp.arrays(np.bool_, N), hnp.arrays(np.float32, (5, C)), truth_arrays)
def test_masked_rows_are_ignored(probs, truth, keep, garbage, garbage_truth):
    padded = np.concatenate([probs, garbage, np.full((1, C), np.nan, np.float32)])
    padded_truth = np.concatenate([truth, garbage_truth[:6]])
    mask = np.concatenate([keep, np.zeros(6, bool)])
    want = epoch_metrics(probs, truth, keep)
    got = epoch_metrics(padded, padded_truth, mask)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], equal_nan=True, err_msg=key, **TOL)


@PROPS
@given(score_arrays, truth_arrays, st.randoms(use_true_random=False))
def test_row_permutation_invariance(probs, truth, rnd):
    perm = np.array(rnd.sample(range(N), N))
    every = np.ones(N, bool)  # same trace as test_masked_rows_are_ignored
    want, got = epoch_metrics(probs, truth, every), epoch_metrics(probs[perm], truth[perm], every)
    for key in want:
        if not key.startswith("voc07"):  # the devkit ranks tied scores by row order
            np.testing.assert_allclose(got[key], want[key], equal_nan=True, err_msg=key, **TOL)
    distinct = (np.argsort(rnd.sample(range(N * C), N * C)).reshape(N, C) / (N * C)).astype(np.float32)
    np.testing.assert_allclose(
        voc07_average_precision(distinct[perm], truth[perm]),
        voc07_average_precision(distinct, truth),
        equal_nan=True,
        **TOL,
    )
