"""pml_jax.plots: PNGs are written, figures hold the data they were given, bad inputs raise PmlError."""

import subprocess
import sys

import numpy as np
import pytest

from pml_jax.errors import PmlError
from pml_jax.plots import (
    _ap_figure,
    _image_grid_figure,
    _loss_figure,
    _lr_find_figure,
    _threshold_figure,
    _top_losses_figure,
    label_text,
    plot_loss,
    plot_lr_find,
    plot_per_class_ap,
    plot_threshold_curve,
    plot_top_losses,
)

XS = np.linspace(0.05, 0.95, 29)
CURVES = {"accuracy": 0.9 + 0.05 * np.sin(3 * XS), "f1_micro": 1 - XS**2}


def _read_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def test_writes_pngs(tmp_path):
    paths = [
        plot_threshold_curve(XS, CURVES, 0.5, tmp_path / "sub" / "thresh.png"),
        plot_per_class_ap(["cat", "dog", "person"], [0.5, np.nan, 0.9], tmp_path / "ap.png"),
        plot_lr_find(np.logspace(-7, 1, 50), np.linspace(2, 1, 50), 1e-3, tmp_path / "lr.png"),
        plot_loss(np.linspace(1, 0.1, 40), [20, 40], [0.5, 0.3], tmp_path / "loss.png", [20]),
        plot_top_losses(*_top_loss_data(), VOCAB, 0.5, tmp_path / "top.png", k=4, ncols=2),
    ]
    for p in paths:
        img = _read_png(p)
        assert img.shape[0] >= 300 and img.shape[1] >= 500
        assert img[..., :3].std() > 0.05  # something was drawn


def test_threshold_figure_holds_curves_and_chosen_cut():
    ax = _threshold_figure(XS, CURVES, 0.5).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for name, ys in CURVES.items():
        np.testing.assert_allclose(lines[name].get_xdata(), XS)
        np.testing.assert_allclose(lines[name].get_ydata(), ys)
    chosen = lines["chosen 0.5"]
    assert list(chosen.get_xdata()) == [0.5, 0.5]
    i = int(np.argmin(np.abs(XS - 0.5)))
    dots = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert sorted(float(d.get_ydata()[0]) for d in dots) == sorted(float(ys[i]) for ys in CURVES.values())


def _bars(ax):
    """{class: AP} of the horizontal bars (each starts at the axis' left limit)."""
    names = [t.get_text() for t in ax.get_yticklabels()]
    return {names[round(b.get_y() + b.get_height() / 2)]: b.get_x() + b.get_width() for b in ax.patches}


def test_ap_figure_sorted_bars_values_nan_and_mean():
    ax = _ap_figure(["a", "b", "c", "d"], [0.2, np.nan, 0.6, 1.0]).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["d", "c", "a", "b"]  # best first, n/a last
    assert ax.yaxis_inverted()
    bars = _bars(ax)
    assert bars.keys() == {"a", "c", "d"}
    np.testing.assert_allclose([bars["a"], bars["c"], bars["d"]], [0.2, 0.6, 1.0])
    assert {t.get_text().strip() for t in ax.texts} == {"0.200", "0.600", "1.000", "n/a"}
    (mean_line,) = ax.get_lines()
    np.testing.assert_allclose(mean_line.get_xdata(), [0.6, 0.6])
    assert ax.get_xlim() == (0.15, 1.0)
    assert ax.get_title() == "per-class AP (n/a: no positives)"


@pytest.mark.parametrize("ap, lo", [([0.97, 0.995, 0.99], 0.95), ([0.95, 1.0], 0.9), ([1.0], 0.95),
                                    ([0.02, 0.5], 0.0), ([np.nan, np.nan], 0.0)])
def test_ap_axis_starts_just_below_the_smallest_ap(ap, lo):
    ax = _ap_figure([str(i) for i in range(len(ap))], ap).axes[0]
    assert ax.get_xlim() == pytest.approx((lo, 1.0))
    assert "n/a" in ax.get_title() if np.isnan(ap).any() else ax.get_title() == "per-class AP"


def test_ap_bars_of_a_good_model_differ_visibly():
    ax = _ap_figure(["x", "y"], [0.97, 0.995]).axes[0]
    lo = ax.get_xlim()[0]
    widths = sorted(b.get_width() for b in ax.patches)
    assert widths[0] / widths[1] < 0.5  # 0.97 vs 0.995 on a 0-1 axis would be 0.97
    assert widths == pytest.approx(sorted([0.97 - lo, 0.995 - lo]))


def test_loss_figure_steps_valid_points_and_unfreeze_mark():
    losses = np.linspace(1.0, 0.2, 30)
    losses[4] = np.nan
    ax = _loss_figure(losses, [10, 20, 30], [0.6, np.nan, 0.4], [20]).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    raw = lines["train (per step)"]
    assert len(raw.get_xdata()) == 29 and 5 not in raw.get_xdata()  # the NaN at step 5 left out
    np.testing.assert_allclose(raw.get_xdata()[:4], [1, 2, 3, 4])
    valid = lines["valid"]
    np.testing.assert_allclose(valid.get_xdata(), [10, 30])
    np.testing.assert_allclose(valid.get_ydata(), [0.6, 0.4])
    smooth_x, smooth_y = lines["train (smoothed)"].get_xdata(), lines["train (smoothed)"].get_ydata()
    gap = int(np.flatnonzero(np.isnan(smooth_x))[0])
    assert smooth_x[gap - 1] == 20 and smooth_x[gap + 1] == 21  # the line breaks at the phase start
    assert smooth_y[gap + 1] == pytest.approx(losses[20])  # smoothing restarts with the new phase
    mark = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
    assert len(mark) == 1 and list(mark[0].get_xdata()) == [20, 20]
    assert [t.get_text() for t in ax.texts] == ["unfreeze"]
    assert ax.get_title() == "loss" and ax.get_xlabel() == "global step"


VOCAB = ["cat", "dog", "person"]


def _top_loss_data():
    """5 tiny images: targets, probs and losses, with item 3 the worst and item 1 NaN."""
    images = np.stack([np.full((4, 4, 3), 50 * i, np.uint8) for i in range(5)])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1], [0, 1, 1]], np.float32)
    probs = np.array([[0.9, 0.1, 0.2], [0.1, 0.8, 0.1], [0.2, 0.1, 0.1], [0.2, 0.7, 0.9], [0.1, 0.9, 0.6]])
    return images, targets, probs, np.array([0.1, np.nan, 0.05, 0.9, 0.3])


def test_top_losses_worst_first_with_labels_and_wrong_ones_red():
    images, targets, probs, losses = _top_loss_data()
    fig = _top_losses_figure(images, targets, probs, losses, VOCAB, 0.5, k=3, ncols=2)
    axes = fig.axes
    assert len(axes) == 4  # 3 shown in a 2 x 2 grid
    titles = [ax.title for ax in axes[:3]]
    assert [t.get_text() for t in titles] == [
        "true: cat;person\npred: dog;person\nloss 0.900",
        "true: dog;person\npred: dog;person\nloss 0.300",
        "true: cat\npred: cat\nloss 0.100",
    ]
    assert [t.get_color() for t in titles] == ["red", "black", "black"]
    assert [int(ax.get_images()[0].get_array()[0, 0, 0]) for ax in axes[:3]] == [150, 200, 0]
    assert not axes[3].get_images()
    everything = _top_losses_figure(images, targets, probs, losses, VOCAB, 0.5, k=9, ncols=3)
    shown = [ax.title.get_text() for ax in everything.axes if ax.get_images()]
    assert len(shown) == 4 and "true: (none)\npred: (none)\nloss 0.050" in shown  # NaN item skipped


def test_image_grid_titles_colours_and_empty_cells():
    images = np.zeros((2, 5, 5, 3), np.uint8)
    fig = _image_grid_figure(images, ["a", "b"], 1, 3, ["red", "black"])
    assert [ax.title.get_text() for ax in fig.axes] == ["a", "b", ""]
    assert fig.axes[0].title.get_color() == "red"
    assert [len(ax.get_images()) for ax in fig.axes] == [1, 1, 0]


def test_label_text():
    assert label_text(np.array([True, False, True]), VOCAB) == "cat;person"
    assert label_text(np.zeros(3, bool), VOCAB) == "(none)"


def test_lr_find_figure_log_axis_skip_end_and_marks():
    lrs, losses = np.logspace(-7, 1, 20), np.linspace(3, 1, 20)
    ax = _lr_find_figure(lrs, losses, {"valley": 1e-3, "slide": None}, skip_end=5).axes[0]
    assert ax.get_xscale() == "log"
    curve, mark = ax.get_lines()
    np.testing.assert_allclose(curve.get_xdata(), lrs[:-5])
    assert mark.get_xdata()[0] == 1e-3 and mark.get_label().startswith("valley")
    expected = np.interp(np.log(1e-3), np.log(lrs), losses)
    assert mark.get_ydata()[0] == pytest.approx(expected)


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda p: plot_threshold_curve(XS, {"acc": XS[:-1]}, 0.5, p), "'acc'"),
        (lambda p: plot_per_class_ap(["a", "b"], [0.1], p), "[2]"),
        (lambda p: plot_lr_find([0.0, 1.0], [1.0, 2.0], None, p), "min 0.0"),
        (lambda p: plot_lr_find([1e-3, 1.0], [1.0], None, p), "losses"),
        (lambda p: plot_loss([1.0, 0.5], [2, 4], [0.4], p), "valid_losses"),
        (lambda p: plot_top_losses(*_top_loss_data(), VOCAB[:2], 0.5, p), "targets"),
        (lambda p: plot_top_losses(*_top_loss_data()[:3], [0.1], VOCAB, 0.5, p), "losses"),
        (lambda p: plot_top_losses(*_top_loss_data()[:3], [np.nan] * 5, VOCAB, 0.5, p), "finite"),
        (lambda p: plot_top_losses(*_top_loss_data(), VOCAB, 0.5, p, k=0), "k=0"),
    ],
)
def test_bad_inputs_raise(tmp_path, call, needle):
    with pytest.raises(PmlError) as err:
        call(tmp_path / "x.png")
    assert needle in str(err.value)


def test_unwritable_path_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(PmlError, match="file"):
        plot_per_class_ap(["a"], [0.5], blocker / "ap.png")


def test_matplotlib_imported_lazily():
    code = "import sys, pml_jax.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
