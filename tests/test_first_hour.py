"""A new user's first hour through `run.py`: every mistake gets one `error:` line, exit 2, no traceback
and nothing written to the workdir; a second run just works; output off a terminal is one line per epoch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pml_jax.cli import main
from pml_jax.config import Config
from pml_jax.download import download
from pml_jax.errors import PmlError
from pml_jax.workflow import run_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic_images", "60", "--size", "32", "--batch_size", "8", "--epochs", "1"]


def _csv_set(tmp_path: Path, n: int, valid: int, bad: int = 0) -> list[str]:
    """A csv source of `n` small JPEGs (`valid` of them is_valid, the first `bad` corrupt); returns its flags."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = images / f"{i}.jpg"
        if i < bad:
            path.write_bytes(b"not a jpeg")
        else:
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        rows.append({"fname": path.name, "labels": "a" if i % 2 else "b", "is_valid": i >= n - valid})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return ["--source", "csv", "--csv", str(tmp_path / "labels.csv"), "--data_path", str(images)]


ERROR_CASES = {
    "lr prefix of lr_mult": (lambda t: ["--lr", "0.003"], "unrecognized arguments: --lr"),
    "bad value of a prefix": (lambda t: ["--lr", "abc"], "unrecognized arguments: --lr"),
    "unknown arch": (lambda t: ["--arch", "resnet9"], "invalid choice: 'resnet9'"),
    "not a number": (lambda t: ["--epochs", "three"], "invalid int value: 'three'"),
    "inputs outside predict": (lambda t: ["photo.jpg"], "image inputs are for --mode predict"),
    "threshold out of range": (lambda t: ["--thresh", "1.5"], "thresh must be in [0, 1]"),
    "voc without a path": (lambda t: ["--source", "voc", "--data_path", "none"], "needs --data_path"),
    "missing weights file": (lambda t: ["--pretrained", str(t / "none.pth")], "none.pth"),
    "fewer items than a batch": (lambda t: _csv_set(t, 12, 4) + ["--batch_size", "16"],
                                 "fewer than one batch of 16"),
    "empty validation split": (lambda t: _csv_set(t, 12, 0), "the validation split is empty"),
    "unreadable images": (lambda t: _csv_set(t, 12, 4, bad=2), "--skip_bad true drops them"),
    "skip_bad leaves too few": (lambda t: _csv_set(t, 12, 4, bad=2) + ["--skip_bad", "true", "--batch_size", "8"],
                                "fewer than one batch of 8"),
    "evaluate without a model": (lambda t: ["--mode", "evaluate"], "no trained model"),
    "predict without a model": (lambda t: ["--mode", "predict", _csv_set(t, 1, 0)[-1]], "no trained model"),
    "predict without inputs": (lambda t: ["--mode", "predict"], "name the image files or folders"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_each_mistake_is_one_error_line_exit_2_and_nothing_written(case, tmp_path, capsys):
    flags, message = ERROR_CASES[case]
    workdir = tmp_path / "run"
    code = main(TINY + ["--data_path", str(tmp_path / "data"), "--workdir", str(workdir)] + flags(tmp_path))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert [line for line in err if line.startswith("error:")] == [err[-1]], err  # one, and last
    assert message in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not workdir.exists()


def test_bad_images_are_listed_before_the_error_line(tmp_path, capsys):
    assert main(TINY + ["--workdir", str(tmp_path / "run")] + _csv_set(tmp_path, 12, 4, bad=2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "2 of 12 images" in err[-1]
    assert any("0.jpg" in line for line in err[:-1]) and any("1.jpg" in line for line in err[:-1])


def test_config_refuses_an_unknown_arch_before_anything_is_built():
    with pytest.raises(PmlError, match="arch='resnet9' is not one of"):
        Config(arch="resnet9")


def test_missing_model_leaves_no_folder_and_no_orbax_traceback(tmp_path):
    """At interpreter exit an unclosed orbax manager used to print a 40-line traceback."""
    workdir = tmp_path / "run"
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "--mode", "evaluate", "--workdir", str(workdir)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: no trained model in {workdir / 'model'}: run training with this --workdir first"]
    assert not workdir.exists()


def test_run_folder_numbers_a_used_workdir_and_resume_keeps_it(tmp_path):
    workdir = tmp_path / "demo"
    said = []
    assert run_folder(workdir, resume=False, log=said.append) == workdir and not said
    (workdir / "checkpoints").mkdir(parents=True)
    assert run_folder(workdir, resume=False, log=said.append) == tmp_path / "demo-2"
    assert said == [f"{workdir} holds an earlier run: this run writes to {tmp_path / 'demo-2'} "
                    f"(--resume continues {workdir})"]
    (tmp_path / "demo-2").mkdir()
    (tmp_path / "demo-2" / "metrics.jsonl").write_text("")
    assert run_folder(workdir, resume=False, log=said.append) == tmp_path / "demo-3"
    assert run_folder(workdir, resume=True, log=said.append) == workdir


def test_offline_download_names_no_partial_file_it_did_not_keep(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PmlError) as e:
        download(f"http://127.0.0.1:{port}/w.pth", tmp_path / "w.pth", progress=False, timeout=5)
    assert "partial data kept" not in str(e.value) and "rerun when online" in str(e.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_second_run_off_a_terminal(tmp_path):
    """Two `run.py` in one workdir, output to a pipe: the second writes to <workdir>-2 and says so; one
    line per epoch (no progress-bar refreshes); an opening header and a closing 'outputs in' line."""
    workdir, data = tmp_path / "run", tmp_path / "data"
    cmd = [sys.executable, str(ROOT / "run.py"), *TINY, "--epochs", "2", "--data_path", str(data),
           "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    runs = [subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
        assert "\r" not in run.stdout + run.stderr  # no bar refreshes
        lines = (run.stdout + run.stderr).splitlines()
        assert len(lines) < 40, lines
        assert lines[0].startswith("checked ") or lines[0].startswith(str(workdir))
        assert any(line.startswith("pml_jax train: 1 cpu device(s)") for line in lines)
        assert any(line.startswith("model: resnet18 + linear head, from scratch") for line in lines)
    first, second = ((r.stdout + r.stderr).splitlines() for r in runs)
    assert first[-1].startswith(f"outputs in {workdir}: config.json, vocab.json, show_batch.png")
    assert f"{workdir} holds an earlier run: this run writes to {tmp_path / 'run-2'}" in second[0]
    assert second[-1].startswith(f"outputs in {tmp_path / 'run-2'}: ")
    for folder in (workdir, tmp_path / "run-2"):
        for name in ("loss.png", "top_losses.png", "per_class_ap.png", "summary.json", "show_batch.png"):
            assert (folder / name).stat().st_size > 0, (folder, name)
