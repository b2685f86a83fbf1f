"""The Learner: fit/fine_tune loop, freezing, checkpoints and resume, lr_find, divergence."""

import json
import threading
import time

import jax
import numpy as np
import pytest
from tiny import Hooked, sigterm_at, tiny_dls, tiny_model

from pml_jax.errors import PmlError
from pml_jax.train import steps
from pml_jax.train.interrupt import StopRequested
from pml_jax.train.learner import Learner

LOWERING = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # jax.monitoring's event of each jit lowering


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


def make_learner(data_root, workdir=None, dls=None, seed=0, **kwargs):
    dls = dls or tiny_dls(data_root)
    model, variables = tiny_model(len(dls.vocab), seed)
    return Learner(model, variables, dls, workdir=workdir, progress=False, log=lambda _: None, seed=seed, **kwargs)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_fit_one_cycle_logs_each_epoch_and_checkpoints(data_root, tmp_path):
    learn = make_learner(data_root, tmp_path)
    history = learn.fit_one_cycle(2, 1e-2)
    assert [r["epoch"] for r in history] == [0, 1]
    for row in history:
        assert np.isfinite(row["train_loss"]) and np.isfinite(row["valid_loss"])
        assert 0.0 <= row["accuracy_multi"] <= 1.0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]
    assert learn.checkpoints.latest_step() == 2 * learn.dls.steps_per_epoch


def saved_steps(learn) -> list[int]:
    return sorted(int(p.name) for p in learn.checkpoints.directory.iterdir() if p.name.isdigit())


def recording_saves(learn) -> list[int]:
    """The global steps `learn` saves checkpoints at, in order, from now on."""
    steps, save = [], learn.checkpoints.save
    learn.checkpoints.save = lambda step, *args: (steps.append(step), save(step, *args))
    return steps


@pytest.mark.parametrize("minutes", [0.0, 60.0])
def test_checkpoints_at_phase_ends_and_epochs_once_the_interval_passed(data_root, tmp_path, minutes):
    """0 minutes: every epoch saves; an hour: only each phase's last epoch."""
    learn = make_learner(data_root, tmp_path, checkpoint_minutes=minutes)
    spe = learn.dls.steps_per_epoch
    saves = recording_saves(learn)
    learn.fine_tune(2, base_lr=1e-2, freeze_epochs=2)
    assert saves == ([spe, 2 * spe, 3 * spe, 4 * spe] if minutes == 0 else [2 * spe, 4 * spe])
    assert saved_steps(learn) == ([3 * spe, 4 * spe] if minutes == 0 else [2 * spe, 4 * spe])  # the newest 2 kept


def test_a_stop_at_an_epochs_end_saves_before_the_interval_passed(data_root, tmp_path):
    dls = tiny_dls(data_root)
    spe = dls.steps_per_epoch
    learn = make_learner(data_root, tmp_path, dls=Hooked(dls, sigterm_at(spe - 1)), checkpoint_minutes=60)
    with pytest.raises(StopRequested, match=f"at step {spe}, the end of an epoch"):
        learn.fit_one_cycle(3, 1e-2)
    assert saved_steps(learn) == [spe]


@pytest.mark.parametrize("augment", ["host", "device"])
def test_what_compiles_ahead_is_what_fine_tune_runs(data_root, augment):
    """compile_ahead's programs (both train steps, the eval step, the gather of its outputs, the epoch
    metrics) are the ones the fit calls, which waits for those still compiling: the fit lowers no
    program itself (the schedule and the valid loss are read on the host), on either input path,
    but the device path's resize of its crop buffers, whose shape the image sizes decide."""
    steps._phase.cache_clear()  # fresh jitted steps: nothing cached by earlier tests
    steps.make_eval_step.cache_clear()
    learn = make_learner(data_root, dls=tiny_dls(data_root, augment=augment))
    compile_step = learn._compile_train_step  # slowed down: the fit's first step waits for it in flight
    learn._compile_train_step = lambda frozen: (time.sleep(1.0), compile_step(frozen))[1]
    lowered = []

    def listener(event, seconds, **kwargs):
        if event == LOWERING and threading.current_thread() is threading.main_thread():
            lowered.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        learn.compile_ahead([True, False])  # the fit starts while they compile
        learn.fine_tune(1, base_lr=1e-2, freeze_epochs=1)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert learn._ahead == {} and len(learn.history) == 2
    assert [name for name in lowered if name != "jit(finish_batch)"] == []


def test_only_the_first_program_compiles_before_the_fit_asks_for_one(data_root):
    """The background thread holds the GIL while it traces: during start-up (Python work) it
    compiles only the first phase's step; the rest waits until a program is first waited for."""
    learn = make_learner(data_root)
    started, compile_eval = [], learn._compile_eval
    learn._compile_eval = lambda arg: (started.append("eval"), compile_eval(arg))[1]
    learn.compile_ahead([True, False])
    rest = [learn._ahead[k] for k in (("eval",), ("train", False))]
    learn._ahead[("train", True)].result(timeout=120)
    time.sleep(0.5)
    assert started == [] and not any(f.done() for f in rest)
    learn.wait_ahead()
    assert started == ["eval"] and learn._ahead == {} and all(f.exception() is None for f in rest)


def test_frozen_phase_trains_only_head_and_batchnorm(data_root):
    learn = make_learner(data_root)
    before = jax.device_get(learn.params)
    stats_before = jax.device_get(learn.batch_stats)
    learn.fit_one_cycle(1, 1e-2, frozen=True)
    after = jax.device_get(learn.params)
    body_b, body_a = before["body"], after["body"]
    np.testing.assert_array_equal(body_b["conv1"]["kernel"], body_a["conv1"]["kernel"])
    np.testing.assert_array_equal(body_b["layer3"]["0"]["conv2"]["kernel"], body_a["layer3"]["0"]["conv2"]["kernel"])
    assert not np.array_equal(body_b["bn1"]["scale"], body_a["bn1"]["scale"])
    assert not np.array_equal(before["head"]["linear1"]["kernel"], after["head"]["linear1"]["kernel"])
    assert not np.array_equal(stats_before["body"]["bn1"]["mean"], jax.device_get(learn.batch_stats)["body"]["bn1"]["mean"])


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    """fine_tune(1, freeze_epochs=1) run to its end: the reference of the resume tests."""
    full = make_learner(data_root, tmp_path_factory.mktemp("full"))
    full.fine_tune(1, base_lr=1e-2, freeze_epochs=1)
    return full


# SIGTERM while train batch spe + offset is read: at the frozen phase's last step, the stop comes
# at the epoch's end, and its checkpoint (global step spe) ends the phase; mid unfrozen phase, it
# comes right after that step.
@pytest.mark.parametrize("offset, saved_at, frozen", [(-1, 0, True), (1, 2, False)],
                         ids=["end_of_frozen_phase", "mid_unfrozen_phase"])
def test_sigterm_then_resume_matches_uninterrupted(data_root, tmp_path, uninterrupted, offset, saved_at, frozen):
    full = uninterrupted
    dls = tiny_dls(data_root)
    spe = dls.steps_per_epoch
    cut = make_learner(data_root, tmp_path / "cut", dls=Hooked(dls, sigterm_at(spe + offset)))
    with pytest.raises(StopRequested, match=f"at step {spe + saved_at}"):
        cut.fine_tune(1, base_lr=1e-2, freeze_epochs=1)
    assert cut.checkpoints.latest_step() == spe + saved_at  # the checkpoint id is the global step
    assert cut.checkpoints.read_meta()["frozen"] is frozen

    again = make_learner(data_root, tmp_path / "cut")
    assert again.resume()
    again.fine_tune(1, base_lr=1e-2, freeze_epochs=1)
    for a, b in zip(leaves(full.params), leaves(again.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(full.batch_stats), leaves(again.batch_stats)):
        np.testing.assert_array_equal(a, b)
    assert [r["valid_loss"] for r in full.history] == [r["valid_loss"] for r in again.history]
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in again.history]
    assert again.step_losses == full.step_losses
    assert again.checkpoints.latest_step() == 2 * spe


def test_resume_with_another_schedule_is_refused(data_root, tmp_path, uninterrupted):
    spe = uninterrupted.dls.steps_per_epoch
    learn = make_learner(data_root, tmp_path)
    learn.checkpoints = uninterrupted.checkpoints  # its newest: global step 2 * spe, unfrozen
    assert learn.resume()
    with pytest.raises(PmlError, match=f"step {2 * spe} is outside this schedule of {spe} steps"):
        learn.fit_one_cycle(1, 1e-2)
    assert learn.resume()
    with pytest.raises(PmlError, match="has the body unfrozen, this schedule has it frozen"):
        learn.fit_one_cycle(3, 1e-2, frozen=True)


def test_lr_find_leaves_the_model_untouched(data_root):
    learn = make_learner(data_root)
    before = leaves(learn.params)
    result = learn.lr_find(num_it=12)
    assert 1e-7 <= result["suggestion"] <= 10
    assert len(result["lrs"]) == len(result["losses"]) <= 12
    assert np.all(np.diff(result["lrs"]) > 0)
    for a, b in zip(before, leaves(learn.params)):
        np.testing.assert_array_equal(a, b)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(data_root, tmp_path):
    dls = tiny_dls(data_root)
    at = dls.steps_per_epoch + 1  # global step 1 of epoch 1

    def nan_targets(n, batch):
        return {**batch, "target": np.full_like(batch["target"], np.nan)} if n == at else batch

    learn = make_learner(data_root, tmp_path, dls=Hooked(dls, nan_targets), checkpoint_minutes=0)
    with pytest.raises(PmlError, match=f"global step {at}"):
        learn.fit_one_cycle(2, 1e-2)
    assert learn.checkpoints.latest_step() == dls.steps_per_epoch
    assert learn.checkpoints.read_meta()["history"][0]["epoch"] == 0


def test_epoch_rows_report_throughput_and_the_share_spent_waiting_for_input(data_root, tmp_path):
    delay = 0.05  # seconds each train batch takes to arrive: a slow input pipeline

    def slow(n, batch):
        time.sleep(delay)
        return batch

    learn = make_learner(data_root, tmp_path, dls=Hooked(tiny_dls(data_root), slow))
    lines = []
    learn.log = lines.append
    (row,) = learn.fit_one_cycle(1, 1e-3)
    steps = learn.dls.steps_per_epoch
    # lower bounds that hold however fast or slow the machine: time >= the training loop's seconds
    assert row["input_wait"] * row["time"] >= steps * delay * 0.99
    assert 0.0 < row["input_wait"] <= 1.0
    assert row["train_img_s"] * row["time"] >= steps * learn.dls.batch_size * 0.99
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["input_wait"] == row["input_wait"]
    assert lines[0].split()[-2:] == ["img/s", "input"]
    assert lines[1].split()[-1] == f"{row['input_wait']:.1%}"


def test_wait_clock_counts_only_the_time_spent_in_next():
    from pml_jax.train.learner import WaitClock

    def source():
        for i in range(3):
            time.sleep(0.02)
            yield i

    clock = WaitClock()
    seen = []
    for item in clock.wrap(source()):
        seen.append(item)
        time.sleep(0.2)  # the consumer's own work is not waiting
    assert seen == [0, 1, 2]
    assert 0.06 * 0.99 <= clock.seconds < 0.06 + 0.3  # counting the consumer's work would give >= 0.66


def test_a_training_run_compiles_nothing_on_the_main_thread_once_it_trains(tmp_path, monkeypatch):
    """`workflow.train` compiles its steps, validation and report ahead: from the first step to the
    closing line the main thread lowers no program (a lowering there would wait behind the
    background compiles)."""
    from pml_jax.cli import main

    steps._phase.cache_clear()
    steps.make_eval_step.cache_clear()
    fit, started, lowered = Learner.fit_phases, [], []
    monkeypatch.setattr(Learner, "fit_phases", lambda self, phases: (started.append(1), fit(self, phases))[1])

    def listener(event, seconds, **kwargs):
        if event == LOWERING and started and threading.current_thread() is threading.main_thread():
            lowered.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        assert main(["--synthetic_images", "40", "--size", "32", "--batch_size", "8", "--epochs", "1",
                     "--freeze_epochs", "1", "--schedule", "fine_tune", "--arch", "resnet18",
                     "--data_path", str(tmp_path / "data"), "--workdir", str(tmp_path / "run")]) == 0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert started and lowered == []
