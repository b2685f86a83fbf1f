"""pml_jax.plots: PNGs are written, figures hold the data they were given, bad inputs raise PmlError."""

import subprocess
import sys

import numpy as np
import pytest

from pml_jax.errors import PmlError
from pml_jax.plots import (
    _ap_figure,
    _lr_find_figure,
    _threshold_figure,
    plot_lr_find,
    plot_per_class_ap,
    plot_threshold_curve,
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


def test_ap_figure_bars_nan_and_mean():
    ax = _ap_figure(["a", "b", "c", "d"], [0.2, np.nan, 0.6, 1.0]).axes[0]
    heights = [b.get_height() for b in ax.patches]
    np.testing.assert_allclose(heights, [0.2, 0.6, 1.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c", "d"]
    assert any(t.get_text() == "n/a" for t in ax.texts)
    (mean_line,) = ax.get_lines()
    np.testing.assert_allclose(mean_line.get_ydata(), [0.6, 0.6])


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
