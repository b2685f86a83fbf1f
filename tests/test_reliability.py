"""Reliability (issue 8): faults, bad input and long runs lose nothing.

Fault injection goes through `run.py` in subprocesses (SIGTERM, SIGKILL, a crash inside orbax's
checkpoint write, a NaN loss, an image deleted mid-run), each followed by `--resume`; the resumed
run must end with exactly the metrics of an uninterrupted one. The fault points are drawn from a
seeded generator (PML_JAX_FAULT_SEED, default 8). The runs use the tiny settings of test_cli.py
and share the session's compilation cache (PML_JAX_HOME, set by conftest.py).
"""

import fcntl
import io
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import struct
import sys
import termios
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from tiny import Hooked, sigterm_at, tiny_dls, tiny_model

from pml_jax.cli import main
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.pipeline import train_batches
from pml_jax.data.synthetic import synthetic
from pml_jax.errors import PmlError
from pml_jax.train.interrupt import StopRequested
from pml_jax.train.learner import TIMING_KEYS, Learner

TESTS = Path(__file__).resolve().parent
TINY = ["--synthetic_images", "60", "--size", "32", "--batch_size", "8"]
RUN = TINY + ["--schedule", "fine_tune", "--freeze_epochs", "1", "--epochs", "1"]
SPE = 6  # 48 train images / 8: global steps 0-5 are phase 0 (frozen), 6-11 phase 1
LAST = 2 * SPE  # the checkpoint id (the global step) at the end of phase 1
_rng = np.random.default_rng(int(os.environ.get("PML_JAX_FAULT_SEED", "8")))
TERM_AT = int(_rng.integers(1, SPE))  # SIGTERM once this many steps are done (phase 0)
KILL_AT = int(_rng.integers(SPE + 1, 2 * SPE - 1))  # SIGKILL in phase 1, before its last step
NAN_AT = int(_rng.integers(SPE, 2 * SPE))  # the global step whose loss is NaN
# the progress bar (drawn on a terminal only, so stderr is a pseudo-terminal): frozen epoch k, then epoch k
PROGRESS = re.compile(r"(frozen )?epoch (\d+)/\d+:\s*\d+%\|[^|]*\|\s*(\d+)/\d+")


# ----------------------------------------------------------------------------- helpers


def run(data: Path, workdir: Path, *flags: str, fault: tuple = (), signal_at: tuple | None = None) -> dict:
    """Run `run.py` (or tests/reliability_worker.py with `fault`) on the tiny fine_tune config.

    signal_at=(signum, step): send the signal once the progress bar shows `step` global train steps
    done. Returns {'rc', 'out', 'err', 'checkpoints' (the folder's entries afterwards), 'rows'}.
    """
    script = [str(TESTS / "reliability_worker.py"), *fault] if fault else [str(TESTS.parent / "run.py")]
    cmd = [sys.executable, *script, *RUN, "--data_path", str(data), "--workdir", str(workdir), *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    master, slave = pty.openpty()  # tqdm draws its bar only on a terminal, and only one with columns
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
    proc = subprocess.Popen(cmd, cwd=TESTS.parent, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    out: list[bytes] = []
    err: list[bytes] = []

    def read(stream):
        if isinstance(stream, int):  # the terminal's master end: EIO once the child has closed it
            try:
                return os.read(stream, 4096)
            except OSError:
                return b""
        return stream.read1(4096)

    def pump(stream, sink, watch):
        for chunk in iter(lambda: read(stream), b""):
            sink.append(chunk)
            if watch and signal_at is not None and proc.returncode is None:
                tail = b"".join(sink[-4:]).decode("utf-8", "replace")
                done = [(0 if frozen else SPE) + (int(e) - 1) * SPE + int(n)
                        for frozen, e, n in PROGRESS.findall(tail)]
                if done and max(done) >= signal_at[1]:
                    proc.send_signal(signal_at[0])
                    watch = False

    threads = [threading.Thread(target=pump, args=(proc.stdout, out, False)),
               threading.Thread(target=pump, args=(master, err, True))]
    for t in threads:
        t.start()
    proc.wait(timeout=900)
    for t in threads:
        t.join()
    os.close(master)
    folder = workdir / "checkpoints"
    metrics = workdir / "metrics.jsonl"
    return {"rc": proc.returncode, "out": b"".join(out).decode("utf-8", "replace"),
            "err": b"".join(err).decode("utf-8", "replace").replace("\r\n", "\n"),
            "checkpoints": sorted(os.listdir(folder)) if folder.is_dir() else [],
            "rows": metrics.read_text().splitlines() if metrics.is_file() else []}


def committed(result: dict) -> list[int]:
    """Checkpoint ids that were completely written (orbax renames the temporary folder last)."""
    return sorted(int(name) for name in result["checkpoints"] if name.isdigit())


def temporary(result: dict) -> list[str]:
    return [name for name in result["checkpoints"] if "tmp" in name]


def rows_without_timing(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def assert_same_result(workdir: Path, reference: Path) -> None:
    """Bit-identical summary, predictions and epoch rows (wall-clock times aside)."""
    for name in ("summary.json", "predictions.csv"):
        assert (workdir / name).read_bytes() == (reference / name).read_bytes(), name
    assert rows_without_timing(workdir) == rows_without_timing(reference)


def stage(result: dict, name: str) -> str:
    return f"{name}: rc={result['rc']} checkpoints={result['checkpoints']}\n{result['err'][-3000:]}"


# ----------------------------------------------------------------------------- fault injection via run.py


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The tiny synthetic set every run here uses (what `--synthetic_images 60 --data_path` writes)."""
    root = tmp_path_factory.mktemp("reliability") / "data"
    synthetic(root=root, n_images=60)
    return root


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict:
    """Two lanes of runs, side by side (2 cores); each lane a reference run, then a chain of faults.

    lane 1: ref (uninterrupted) | a: SIGTERM -> --resume + SIGKILL -> --resume + crash while
            committing the last checkpoint -> --resume
    lane 2: ref2 (--resume on an empty workdir) | b: NaN loss -> --resume + an image deleted before
            phase 1 reads it -> (file restored) --resume + crash right after the last checkpoint's
            temporary folder appears -> --resume
    """
    top = tmp_path_factory.mktemp("runs")
    data_b = top / "data_b"  # lane 2 deletes an image: its own copy of the same set
    shutil.copytree(data, data_b)
    train = pd.read_csv(data_b / "train.csv")
    victim = str(data_b / "train" / train[~train["is_valid"]]["fname"].iloc[int(_rng.integers(48))])
    results: dict = {"victim": victim}

    def lane1():
        results["ref"] = run(data, top / "ref")
        a = top / "a"
        results["a1"] = run(data, a, signal_at=(signal.SIGTERM, TERM_AT))
        results["a2"] = run(data, a, "--resume", signal_at=(signal.SIGKILL, KILL_AT))
        results["a3"] = run(data, a, "--resume", fault=("kill-in-save", f"{LAST}:commit"))
        results["a4"] = run(data, a, "--resume")

    def lane2():
        results["ref2"] = run(data, top / "ref2", "--resume")
        b = top / "b"
        results["b1"] = run(data_b, b, fault=("nan-at", str(NAN_AT)))
        results["b2"] = run(data_b, b, "--resume", fault=("delete-at", f"1:{victim}"))
        results["b2_victim_gone"] = not os.path.exists(victim)
        if os.path.exists(victim + ".away"):
            os.rename(victim + ".away", victim)
        results["b3"] = run(data_b, b, "--resume", fault=("kill-in-save", f"{LAST}:create"))
        results["b4"] = run(data_b, b, "--resume")

    with ThreadPoolExecutor(2) as pool:
        for f in [pool.submit(lane1), pool.submit(lane2)]:
            f.result()
    results["dirs"] = {name: top / name for name in ("ref", "ref2", "a", "b")}
    return results


@pytest.mark.slow
def test_same_config_and_seed_give_bit_identical_metrics_across_processes(runs):
    ref, ref2 = runs["ref"], runs["ref2"]
    assert ref["rc"] == 0, stage(ref, "ref")
    assert ref2["rc"] == 0, stage(ref2, "ref2")
    assert len(ref["rows"]) == 2
    assert_same_result(runs["dirs"]["ref2"], runs["dirs"]["ref"])
    assert committed(ref) == [SPE, LAST] and temporary(ref) == []


@pytest.mark.slow
def test_resume_on_a_workdir_without_checkpoints_starts_fresh(runs):
    ref2 = runs["ref2"]
    assert ref2["rc"] == 0, stage(ref2, "ref2")
    assert "resuming from" not in ref2["out"] and "checked 60 images" in ref2["out"]
    assert rows_without_timing(runs["dirs"]["ref2"]) == rows_without_timing(runs["dirs"]["ref"])


@pytest.mark.slow
def test_a_used_workdir_is_left_untouched_without_resume(runs, data, capsys):
    """A second run without --resume takes the next free <workdir>-N and says so."""
    ref = runs["dirs"]["ref"]
    before = {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()}
    assert main(RUN + ["--data_path", str(data), "--workdir", str(ref)]) == 0
    assert f"{ref} holds an earlier run: this run writes to {ref.with_name('ref-2')}" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in ref.rglob("*") if p.is_file()} == before
    assert (ref.with_name("ref-2") / "model").is_dir()


@pytest.mark.slow
def test_sigterm_sigkill_and_a_crash_while_committing_then_resume_lose_nothing(runs):
    a1, a2, a3, a4 = (runs[k] for k in ("a1", "a2", "a3", "a4"))
    # SIGTERM mid phase 0: a checkpoint where it stopped, exit 130 with the hint
    assert a1["rc"] == 130, stage(a1, "a1 SIGTERM")
    assert "rerun with --resume" in a1["err"] and "Traceback" not in a1["err"]
    stopped = committed(a1)[-1]
    assert TERM_AT <= stopped <= SPE and temporary(a1) == []
    # SIGKILL mid phase 1: the end-of-phase-0 checkpoint is the newest, whole
    assert a2["rc"] == -signal.SIGKILL, stage(a2, "a2 SIGKILL")
    assert f"resuming from step {stopped} " in a2["out"]
    assert committed(a2)[-1] == SPE and temporary(a2) == []
    # killed after writing the last checkpoint, before orbax's atomic rename: it does not count
    assert a3["rc"] == -signal.SIGKILL, stage(a3, "a3 crash at commit")
    assert f"resuming from step {SPE} " in a3["out"]
    assert committed(a3)[-1] == SPE and temporary(a3) == [f"{LAST}.orbax-checkpoint-tmp"]
    assert len(a3["rows"]) == 2  # the phase-1 row was logged before the crash ...
    assert a4["rc"] == 0, stage(a4, "a4 resume")
    assert f"resuming from step {SPE} " in a4["out"]
    assert committed(a4) == [SPE, LAST] and temporary(a4) == []  # ... and the leftovers cleaned up
    assert_same_result(runs["dirs"]["a"], runs["dirs"]["ref"])  # ... and not repeated


@pytest.mark.slow
def test_nan_loss_a_deleted_image_and_a_crash_mid_save_then_resume_lose_nothing(runs):
    b1, b2, b3, b4 = (runs[k] for k in ("b1", "b2", "b3", "b4"))
    assert b1["rc"] == 2, stage(b1, "b1 NaN")
    assert f"error: training diverged: loss is nan at global step {NAN_AT}" in b1["err"]
    assert "Traceback" not in b1["err"]
    assert committed(b1) == [SPE] and len(b1["rows"]) == 1  # the last good checkpoint is kept
    # the image vanished after the up-front check: a clear error naming it, nothing lost
    assert runs["b2_victim_gone"] and b2["rc"] == 2, stage(b2, "b2 deleted image")
    assert "error: " in b2["err"] and runs["victim"] in b2["err"] and "Traceback" not in b2["err"]
    assert committed(b2) == [SPE] and len(b2["rows"]) == 1
    # killed right after the temporary folder of the last checkpoint appeared
    assert b3["rc"] == -signal.SIGKILL, stage(b3, "b3 crash at create")
    assert committed(b3) == [SPE] and temporary(b3) == [f"{LAST}.orbax-checkpoint-tmp"]
    assert b4["rc"] == 0, stage(b4, "b4 resume")
    assert f"resuming from step {SPE} " in b4["out"]
    assert committed(b4) == [SPE, LAST] and temporary(b4) == []
    assert_same_result(runs["dirs"]["b"], runs["dirs"]["ref"])


# ----------------------------------------------------------------------------- bad images through run.py


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def bad_csv_set(data, tmp_path_factory):
    """A csv source: 23+1 train and 7+1 valid good images (one of each a PNG named .jpg) and bad files."""
    root = tmp_path_factory.mktemp("bad_csv")
    (root / "img").mkdir()
    table = pd.read_csv(data / "train.csv", keep_default_na=False)
    train, valid = table[~table["is_valid"]].iloc[:23], table[table["is_valid"]].iloc[:7]
    rows = []
    for _, r in pd.concat([train, valid]).iterrows():
        shutil.copy(data / "train" / r["fname"], root / "img" / r["fname"])
        rows.append((r["fname"], r["labels"], r["is_valid"]))
    for name, src, is_valid in (("png_train.jpg", train.iloc[0], False), ("png_valid.jpg", valid.iloc[0], True)):
        with Image.open(data / "train" / src["fname"]) as im:
            (root / "img" / name).write_bytes(_png(np.asarray(im.convert("RGB"))))  # PNG bytes, .jpg name
        rows.append((name, src["labels"], is_valid))
    jpeg = (data / "train" / train.iloc[1]["fname"]).read_bytes()
    bad = {"empty.jpg": b"", "truncated.jpg": jpeg[: len(jpeg) // 2], "notes.jpg": b"fname,labels\nnot an image\n",
           "corrupt.jpg": jpeg[:300] + np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes()}
    for name, payload in bad.items():
        (root / "img" / name).write_bytes(payload)
    Image.new("1", (10000, 10000)).save(root / "img" / "huge.png")  # 100 Mpx: a few KB on disk
    for i, name in enumerate([*bad, "huge.png"]):
        rows.append((name, train.iloc[i]["labels"], i % 2 == 1))
    pd.DataFrame(rows, columns=["fname", "labels", "is_valid"]).to_csv(root / "items.csv", index=False)
    good_valid = [*valid["fname"], "png_valid.jpg"]
    return root, [*bad, "huge.png"], good_valid


def csv_flags(root: Path, workdir: Path) -> list[str]:
    return TINY + ["--epochs", "1", "--source", "csv", "--csv", str(root / "items.csv"),
                   "--data_path", str(root / "img"), "--workdir", str(workdir)]


def test_bad_images_are_reported_up_front_by_name(bad_csv_set, tmp_path, capsys):
    root, bad, _ = bad_csv_set
    assert main(csv_flags(root, tmp_path / "w")) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and f"{len(bad)} of " in err
    assert "--skip_bad true" in err
    assert "Traceback" not in err
    for name in bad:
        assert name in err
    assert "png_" not in err  # a PNG named .jpg is decoded by its content: not bad
    assert "10000x10000" in err and "empty file" in err and "not an image" in err
    assert not (tmp_path / "w" / "checkpoints").exists()  # refused before any work


@pytest.mark.slow
def test_skip_bad_trains_and_reports_every_skipped_file(bad_csv_set, tmp_path, capsys):
    root, bad, good_valid = bad_csv_set
    workdir = tmp_path / "w"
    assert main(csv_flags(root, workdir) + ["--skip_bad", "true"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {len(bad)} bad" in out
    for name in bad:
        assert re.search(rf"^  {re.escape(name)}: ", out, re.M), name
    summary = json.loads((workdir / "summary.json").read_text())
    predicted = pd.read_csv(workdir / "predictions.csv", keep_default_na=False)
    assert summary["n_valid"] == len(good_valid)  # every readable validation item, none dropped silently
    assert sorted(predicted["fname"]) == sorted(good_valid)


# ----------------------------------------------------------------------------- Learner-level faults


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def learner(root, workdir=None, dls=None, **kwargs):
    dls = dls or tiny_dls(root)
    model, variables = tiny_model(len(dls.vocab))
    return Learner(model, variables, dls, workdir=workdir, progress=False, log=lambda _: None, **kwargs)


def test_sigterm_at_an_epochs_last_step_keeps_its_row_and_resume_rewrites_metrics(tiny_root, tmp_path):
    full = learner(tiny_root, tmp_path / "full")
    full.fit_one_cycle(2, 1e-2)
    dls = tiny_dls(tiny_root)
    spe = dls.steps_per_epoch

    cut = learner(tiny_root, tmp_path / "cut", Hooked(dls, sigterm_at(spe - 1)))
    with pytest.raises(StopRequested, match=f"at step {spe}, the end of an epoch"):
        cut.fit_one_cycle(2, 1e-2)
    assert cut.checkpoints.latest_step() == spe
    assert [r["epoch"] for r in cut.checkpoints.read_meta()["history"]] == [0]
    # a crash after a row is logged but before its checkpoint commits leaves a row the resume replays
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
        f.write('{"phase": 0, "epoch": 1, "train_loss": 1.0}\n')
    again = learner(tiny_root, tmp_path / "cut")
    assert again.resume()
    again.fit_one_cycle(2, 1e-2)
    assert rows_without_timing(tmp_path / "cut") == rows_without_timing(tmp_path / "full")


def test_validation_image_deleted_mid_run_stops_naming_it_and_keeps_the_checkpoint(tiny_root, tmp_path):
    dls = tiny_dls(tiny_root, cache="none")  # read every epoch (a cache would not look at the file again)
    spe = dls.steps_per_epoch
    victim = dls.items.paths(True)[3]

    def delete(n, batch):
        if n == spe:  # epoch 1 starts: long after the images were checked
            os.rename(victim, victim + ".away")
        return batch

    learn = learner(tiny_root, tmp_path, Hooked(dls, delete), checkpoint_minutes=0)  # a checkpoint every epoch
    try:
        with pytest.raises(PmlError, match=re.escape(victim)):
            learn.fit_one_cycle(2, 1e-2)
    finally:
        os.rename(victim + ".away", victim)
    assert learn.checkpoints.latest_step() == spe  # epoch 0's checkpoint survives
    again = learner(tiny_root, tmp_path)
    assert again.resume()
    assert [r["epoch"] for r in again.fit_one_cycle(2, 1e-2)] == [0, 1]


def test_lr_find_stops_early_when_the_loss_explodes(tiny_root):
    result = learner(tiny_root).lr_find(start_lr=1e-4, end_lr=1e4, num_it=60)
    losses = np.asarray(result["losses"])
    assert len(losses) < 60  # stopped before num_it ...
    assert losses[-1] > 4 * np.nanmin(losses)  # ... because the smoothed loss passed 4x its best
    assert not np.any(losses[:-1] > 4 * np.minimum.accumulate(losses)[:-1])  # and not earlier


# ----------------------------------------------------------------------------- streaming


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _growth_mb(items: LabelledImages, n_batches: int) -> float:
    """Peak RSS growth (MB) while taking `n_batches` train batches of 8 at 32 px."""
    start = peak = _rss_mb()
    for i, _ in enumerate(train_batches(items, 32, 8, seed=0, epoch=0)):
        peak = max(peak, _rss_mb())
        if i + 1 == n_batches:
            break
    return peak - start


def test_train_pipeline_memory_does_not_grow_with_the_dataset(tmp_path):
    """20000 items (2.8 GiB of pixels if materialised decoded, ~1 GiB encoded) stream in the same
    memory as 200 items: only per-item metadata (paths, sizes, crop windows) is O(N)."""
    names = []
    for i in range(4):
        noise = np.random.default_rng(i).integers(0, 256, (224, 224, 3), np.uint8)
        Image.fromarray(noise).save(tmp_path / f"{i}.jpg", quality=95)
        names.append(f"{i}.jpg")
    encoded = np.mean([os.path.getsize(tmp_path / n) for n in names])

    def items(n):
        df = pd.DataFrame({"fname": [names[i % 4] for i in range(n)], "labels": "a", "is_valid": False})
        return LabelledImages(df, tmp_path, ("a",))

    _growth_mb(items(200), 20)  # warm up TensorFlow
    small = _growth_mb(items(200), 20)
    large = _growth_mb(items(20000), 20)
    assert 20000 * encoded / 2**20 > 900  # MiB: what materialising the encoded bytes alone would cost
    per_item = (large - small) * 2**20 / (20000 - 200)  # bytes of peak memory per extra item
    assert per_item < encoded / 10, (small, large, encoded)  # metadata, not images (measured ~1 KiB)
