"""bench/vs_fastai.py without its extra: one `error:` line naming the extra, exit 2, nothing written;
its report's wall-clock format."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from vs_fastai_report import _clock  # noqa: E402


def test_missing_fastai_extra_is_one_error_line(tmp_path):
    shim = tmp_path / "shim" / "fastai"  # found first on sys.path: fastai is missing even where it is installed
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'fastai'\")\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(shim.parent)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_fastai.py"), "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fastai" in last and "pip install -e '.[fastai]'" in last
    assert not out.exists()


def test_wall_clock_rounds_before_splitting_off_minutes():
    assert [_clock(s) for s in (59.4, 119.6, 179.6, 185.2, 600.0)] == [
        "59 s", "2 min 00 s", "3 min 00 s", "3 min 05 s", "10 min 00 s"]
