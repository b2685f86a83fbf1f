"""bench/device_check.py --quick runs without TensorFlow and writes its JSON and markdown."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Runs the script as on a host without TensorFlow: every finder on sys.meta_path is wrapped so
# that tensorflow* is not found (import raises ModuleNotFoundError, importlib.util.find_spec
# returns None, as libraries that probe for it expect).
NO_TF = """
import runpy, sys
class Hide:
    def __init__(self, finder):
        self.finder = finder
    def __getattr__(self, name):
        return getattr(self.finder, name)
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0].startswith('tensorflow'):
            return None
        return self.finder.find_spec(name, path, target)
sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
assert not [m for m in sys.modules if m.startswith('tensorflow')]
"""


def finite(*values) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


@pytest.mark.slow
def test_quick_device_check_writes_every_section_without_tensorflow(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "-c", NO_TF, str(ROOT / "bench/device_check.py"), "--quick",
                           "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["complete"] and report["skipped"] == []
    env = report["environment"]
    assert env["mode"] == "quick" and env["backend"] == "cpu"
    assert env["auto_kernels"] == "cpu" and env["auto_dtype"] == "float32"

    parity = {(r["dtype"], r["precision"]): r for r in report["parity"]}
    assert set(parity) == {("float32", "default"), ("float32", "highest"), ("bfloat16", "default")}
    assert parity["float32", "default"]["within_tol"] and parity["float32", "highest"]["within_tol"]
    assert 0 < parity["bfloat16", "default"]["max_rel"] < 0.05  # bf16 rounding, not a wrong model

    ft = report["fine_tune"]
    assert len(ft["step_losses"]) == 16 and finite(*ft["step_losses"])
    assert ft["loss_fell"] and ft["last_loss"] < ft["first_loss"]
    assert [row["phase"] for row in ft["history"]] == [0, 1]
    if importlib.util.find_spec("matplotlib"):
        assert (out / ft["plot"]).stat().st_size > 0

    assert finite(report["transfer"]["put_s"]) and report["transfer"]["bytes"] == 8 * 32 * 32 * 3 + 8 * 20 * 4
    steps = {(r["dtype"], r["phase"]): r for r in report["steps"]}
    assert set(steps) == {(d, p) for d in ("float32", "bfloat16") for p in ("train", "eval")}
    torch_here = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision")
    for row in steps.values():
        assert finite(row["jax_img_s"], row["compile_s"], row["jax_gflops"], row["transfer_share"])
        assert finite(row["torch_img_s"], row["ratio"]) if torch_here else "torch_img_s" not in row

    table = (out / "device_check.md").read_text()
    assert "## torchvision parity" in table and "## fine_tune" in table and "| resnet18 | bfloat16 | eval |" in table
    assert table in proc.stdout
