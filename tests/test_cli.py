"""End to end through `run.py`'s main: train, evaluate, predict, lr_find, and user errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pml_jax.cli import main

TINY = ["--synthetic_images", "60", "--size", "32", "--batch_size", "8", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    workdir = root / "run"
    data = root / "data"
    assert main(TINY + ["--data_path", str(data), "--workdir", str(workdir)]) == 0
    return workdir, data


@pytest.mark.slow
def test_train_writes_every_output(trained):
    workdir, _ = trained
    for name in ("config.json", "vocab.json", "metrics.jsonl", "show_batch.png", "threshold_curve.png",
                 "per_class_ap.png", "predictions.csv", "summary.json", "loss.png", "top_losses.png"):
        assert (workdir / name).stat().st_size > 0, name
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert (workdir / "model").is_dir() and (workdir / "checkpoints").is_dir()
    summary = json.loads((workdir / "summary.json").read_text())
    vocab = json.loads((workdir / "vocab.json").read_text())
    preds = pd.read_csv(workdir / "predictions.csv", keep_default_na=False)
    assert len(preds) == summary["n_valid"] > 0
    assert [c for c in preds.columns if c.startswith("p_")] == [f"p_{v}" for v in vocab]
    assert set(summary["per_class_thresholds"]) == set(vocab)
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0]
    assert json.loads((workdir / "config.json").read_text())["head"] == "linear"  # the demo's head


def run_files(workdir):
    """(sha256 of the bytes, mtime) of every file of a training run (everything but eval/)."""
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(workdir.rglob("*"))
            if p.is_file() and "eval" not in p.relative_to(workdir).parts}


@pytest.mark.slow
def test_evaluate_writes_only_into_eval_and_reproduces_the_validation_metrics(trained, capsys):
    workdir, _ = trained
    before = run_files(workdir)
    assert {"summary.json", "predictions.csv", "loss.png", "top_losses.png"} <= {p.name for p in before}
    capsys.readouterr()
    assert main(["--mode", "evaluate", "--workdir", str(workdir)]) == 0
    assert run_files(workdir) == before  # the training run's files are untouched, bytes and times
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == (f"outputs in {workdir / 'eval'}: summary.json, predictions.csv, threshold_curve.png, "
                           "per_class_ap.png, top_losses.png")
    assert sorted(p.name for p in (workdir / "eval").iterdir()) == sorted(printed[-1].split(": ")[1].split(", "))
    for name in ("predictions.csv", "threshold_curve.png", "per_class_ap.png", "top_losses.png"):
        assert (workdir / "eval" / name).stat().st_size > 0, name
    after = json.loads((workdir / "eval" / "summary.json").read_text())
    trained_summary = json.loads((workdir / "summary.json").read_text())
    for key in ("n_valid", "accuracy_multi", "best_thresh", "best_accuracy", "mAP", "f1_micro"):
        assert after[key] == pytest.approx(trained_summary[key], rel=1e-6, abs=1e-7), key
    eval_table = pd.read_csv(workdir / "eval" / "predictions.csv", keep_default_na=False)
    train_table = pd.read_csv(workdir / "predictions.csv", keep_default_na=False)
    assert list(eval_table["fname"]) == list(train_table["fname"])


@pytest.mark.slow
def test_predict_labels_a_folder(trained, tmp_path, capsys):
    workdir, data = trained
    images = sorted((data / "train").glob("*.jpg"))[:5]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(["--mode", "predict", "--workdir", str(workdir), str(folder)]) == 0
    out = pd.read_csv(workdir / "predict.csv", keep_default_na=False)
    assert sorted(out["fname"].map(lambda f: f.rsplit("/", 1)[-1])) == sorted(p.name for p in images)
    probs = out[[c for c in out.columns if c.startswith("p_")]].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))
    printed = capsys.readouterr().out
    assert "broken.jpg" in printed and images[0].name in printed


@pytest.mark.slow
def test_lr_find_writes_plot_and_suggestion(trained, tmp_path):
    _, data = trained
    workdir = tmp_path / "lr"
    assert main(TINY + ["--mode", "lr_find", "--data_path", str(data), "--workdir", str(workdir)]) == 0
    result = json.loads((workdir / "lr_find.json").read_text())
    assert 1e-7 <= result["suggestion"] <= 10
    assert (workdir / "lr_find.png").stat().st_size > 0


@pytest.mark.slow
def test_predict_on_only_unreadable_images_is_one_error(trained, tmp_path, capsys):
    workdir, _ = trained
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    before = sorted(p.name for p in workdir.iterdir())
    assert main(["--mode", "predict", "--workdir", str(workdir), str(tmp_path / "broken.jpg")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: predict: none of the 1 image(s) could be read"
    assert [line for line in err if line.startswith("error:")] == [err[-1]]
    assert any("broken.jpg" in line for line in err[:-1])
    assert sorted(p.name for p in workdir.iterdir()) == before


@pytest.mark.parametrize("flags, code", [(["--help"], 0), (["--epochs", "0"], 2), (["--no_such_flag"], 2)])
def test_the_console_entry_runs_exit_handlers_and_keeps_the_exit_status(flags, code, tmp_path):
    """cli.run (run.py, pml-jax) ends the process itself after main: exit handlers still run, output
    is flushed and main's status is the process's."""
    script = ("import atexit, sys; from pml_jax import cli; "
              "atexit.register(lambda: print('handler ran', flush=True)); "
              f"sys.argv = ['run.py', *{flags!r}, '--workdir', {str(tmp_path / 'w')!r}]; cli.run()")
    out = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == code, out.stderr[-2000:]
    assert out.stdout.rstrip().endswith("handler ran")
    assert ("error:" in out.stderr) == (code == 2)
    assert not (tmp_path / "w").exists()
