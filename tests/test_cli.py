"""End to end through `run.py`'s main: train, evaluate, predict, lr_find, and user errors."""

import json

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
                 "per_class_ap.png", "predictions.csv", "summary.json"):
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


@pytest.mark.slow
def test_evaluate_reproduces_the_validation_metrics(trained):
    workdir, _ = trained
    assert main(["--mode", "evaluate", "--workdir", str(workdir)]) == 0
    before = json.loads((workdir / "summary.json").read_text())
    after = json.loads((workdir / "eval_summary.json").read_text())
    for key in ("n_valid", "accuracy_multi", "best_thresh", "best_accuracy", "mAP", "f1_micro"):
        assert after[key] == pytest.approx(before[key], rel=1e-6, abs=1e-7), key


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


@pytest.mark.parametrize("flags, message", [
    (["--arch", "resnet7"], "unknown arch 'resnet7'"),
    (["--source", "voc"], "needs --data_path"),
    (["--source", "csv", "--data_path", "/nonexistent"], "needs --csv"),
    (["--mode", "evaluate", "--workdir", "/nonexistent/run"], "no trained model"),
    (["--mode", "predict", "--workdir", "/nonexistent/run"], "no trained model"),
    (["--thresh", "1.5"], "thresh must be in [0, 1]"),
])
def test_user_errors_print_one_line_and_exit_2(flags, message, tmp_path, capsys):
    assert main(TINY + ["--workdir", str(tmp_path / "w")] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_bad_flag_value_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--epochs", "three"])
    assert e.value.code == 2
    assert "invalid int value: 'three'" in capsys.readouterr().err
