"""The Learner: fastai's fit_one_cycle / fine_tune / lr_find loop around the jitted steps.

One global step counter (it names the checkpoints too); a checkpoint at the end of each phase, at
an epoch's end once `checkpoint_minutes` passed since the last one, and on SIGINT/SIGTERM; a run
that resumes from a checkpoint replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pml_jax.choices import CHECKPOINT_MINUTES
from pml_jax.errors import PmlError
from pml_jax.metrics import epoch_metrics
from pml_jax.train.checkpoint import Checkpoints
from pml_jax.train.groups import N_GROUPS
from pml_jax.train.interrupt import StopRequested, StopSignal
from pml_jax.train.mesh import batch_sharding, check_batch_size, make_mesh, replicate, shard_batch
from pml_jax.train.optim import WD
from pml_jax.train.schedules import (Phase, SmoothLoss, fine_tune_plan, locate_step, lr_find_schedule,
                                     lr_find_should_stop, lr_find_suggestion, one_cycle, phase_starts)
from pml_jax.train.inference import compile_predict, predict_batches
from pml_jax.train.steps import TrainState, setup_phase

# Wall-clock fields of an epoch row (they differ run to run): the epoch's time, its training
# images/s (all processes; the first epoch of a phase includes compiling the step) and the share
# of the training loop spent waiting for the input pipeline (this process's).
TIMING_KEYS = ("time", "train_img_s", "input_wait")
_END = object()  # WaitClock's end-of-iterator marker


class WaitClock:
    """Wraps an iterator and sums the seconds its consumer spent blocked on `next`."""

    def __init__(self):
        self.seconds = 0.0

    def wrap(self, iterable):
        iterator = iter(iterable)
        while True:
            start = time.perf_counter()
            item = next(iterator, _END)
            self.seconds += time.perf_counter() - start
            if item is _END:
                return
            yield item


class Learner:
    """Trains `model` (a Classifier) with `variables` on `dls` (pml_jax.data.loaders.DataLoaders).

    wd: decoupled weight decay; thresh: accuracy_multi's threshold in the epoch table;
    dtype: compute dtype (params stay float32); workdir: checkpoints and metrics.jsonl go there;
    checkpoint_minutes: the least minutes between two end-of-epoch checkpoints inside a phase (0: after
    every epoch; a phase's last epoch always saves);
    log: called with each printed line (default print); writer: `scalars(step, dict)` sink
    (e.g. train.tensorboard.TensorBoard) for per-step loss, lrs and momentum and per-epoch metrics.
    """

    def __init__(self, model, variables: dict, dls, *, wd: float = WD, thresh: float = 0.5,
                 dtype=jnp.float32, seed: int = 0, workdir: str | Path | None = None,
                 mesh=None, log: Callable[[str], None] = print, progress: bool = True,
                 meta: dict | None = None, writer=None, checkpoint_minutes: float = CHECKPOINT_MINUTES):
        self.model, self.dls, self.wd, self.thresh, self.dtype = model, dls, wd, thresh, dtype
        self.mesh = mesh if mesh is not None else make_mesh()
        check_batch_size(dls.batch_size, self.mesh)
        self.params = replicate(variables["params"], self.mesh)
        self.batch_stats = replicate(variables["batch_stats"], self.mesh)
        self.key = jax.random.key(seed)
        self.log, self.progress, self.writer = log, progress, writer  # writer: TensorBoard or None
        self.workdir = Path(workdir) if workdir is not None else None
        self.checkpoint_seconds = 60.0 * checkpoint_minutes
        self._saved_at = time.monotonic()  # when the last checkpoint was saved (or the learner made)
        self.meta = dict(meta or {})  # extra JSON saved with each checkpoint (config, vocab, ...)
        self.history: list[dict] = []
        self.step_losses: list[float] = []  # the raw training loss of every global step, in order
        self.smooth_loss = SmoothLoss()  # the current phase's smoothed training loss
        self._resume: dict | None = None
        self._preds: tuple | None = None  # ((params, batch_stats, dls), get_preds' output) of the last one
        self._ahead: dict[tuple, Future] = {}  # programs `compile_ahead` compiles, by key
        self._asked = threading.Event()  # set once the fit (or anything) waits for a program compiled ahead

    @functools.cached_property
    def checkpoints(self) -> Checkpoints | None:
        """The store in workdir/checkpoints (None without a workdir), created when first used."""
        return Checkpoints(self.workdir / "checkpoints") if self.workdir else None

    def close(self) -> None:
        """Finish writing checkpoints and release the store, if one was opened."""
        if self.__dict__.get("checkpoints") is not None:
            self.checkpoints.close()

    # ----------------------------------------------------------------- compiling ahead
    def compile_ahead(self, frozen: Sequence[bool], then: Sequence[Callable[[], None]] = ()) -> None:
        """Compile in a background thread, one after another, the train step of the first freeze
        state in `frozen`, the eval step with the epoch metrics, then the train steps of the other
        states, for this learner's batches, and last run `then` (what compiles the programs that
        follow the fit). Each program's first use waits for its compile (nothing compiles twice).
        Call it before slow single-threaded work (loading data, show_batch): XLA then uses the
        cores that work leaves idle, and later phases' steps compile while the first phase trains.
        All but the first program wait until the fit first asks for one: tracing them holds the
        GIL, which the start-up's Python work needs, while the steps' execution releases it."""
        states = list(dict.fromkeys(frozen))
        jobs = [(("train", f), self._compile_train_step, f) for f in states[:1]]
        jobs += [(("eval",), self._compile_eval, None)]
        jobs += [(("train", f), self._compile_train_step, f) for f in states[1:]]
        jobs += [(("then", i), lambda fn: fn(), fn) for i, fn in enumerate(then)]
        futures = [Future() for _ in jobs]
        self._ahead = {key: future for (key, _, _), future in zip(jobs, futures)}

        def work():
            for i, ((_, compile_one, arg), future) in enumerate(zip(jobs, futures)):
                if i == 1:
                    self._asked.wait()
                try:
                    future.set_result(compile_one(arg))
                except BaseException as e:  # noqa: BLE001 - handed to whoever waits for it
                    future.set_exception(e)

        threading.Thread(target=work, name="pml_jax compile ahead", daemon=True).start()

    def _wait_ahead(self, *key) -> None:
        """Block until the job `key` (('train', frozen), ('eval',) or ('then', i)) of `compile_ahead`
        is done, if it was asked for; from the first call on, the background thread runs every job."""
        self._asked.set()
        if key in self._ahead:
            self._ahead.pop(key).result()

    def wait_ahead(self) -> None:
        """Block until everything `compile_ahead` was asked for is done; raises what a job raised."""
        for key in list(self._ahead):
            self._wait_ahead(*key)

    def _compile_train_step(self, frozen: bool) -> None:
        """Lower and compile the train step with the exact shapes, dtypes and shardings of
        `_run_phase`'s calls, so its jit cache hits."""
        train = _sharded_like(self.dls.batch_shapes(), self.mesh)
        setup = setup_phase(self.model, self.params, self.batch_stats, frozen, wd=self.wd, dtype=self.dtype)
        state = TrainState(self.params, self.batch_stats, replicate(setup.opt_state, self.mesh))
        lrs, mom = jax.ShapeDtypeStruct((N_GROUPS,), jnp.float32), jax.ShapeDtypeStruct((), jnp.float32)
        args = (state, train, lrs, mom, jax.random.fold_in(self.key, 0))  # as `_run_phase` calls it
        setup.step.lower(*_abstract(args)).compile()

    def _compile_eval(self, _=None) -> None:
        """What `validate` runs: the predictions' programs (`compile_predict`), and the epoch
        metrics run once on zeros (they cost nothing)."""
        valid = _sharded_like(self.dls.batch_shapes(), self.mesh)
        variables = replicate((self.params, self.batch_stats), self.mesh)
        rows, n_classes = self.dls.valid_rows, len(self.dls.vocab)
        compile_predict(self.model, _abstract(variables), valid, rows // self.dls.batch_size, self.mesh, self.dtype)
        zeros = replicate(jnp.zeros((rows, n_classes), jnp.float32), self.mesh)  # as gathered predictions
        epoch_metrics(zeros, zeros, replicate(jnp.ones((rows,), bool), self.mesh), thresh=self.thresh)

    # ----------------------------------------------------------------- schedules
    def fit_one_cycle(self, epochs: int, lr_max=3e-3, pct_start: float = 0.25, div: float = 25.0,
                      div_final: float = 1e5, frozen: bool = False) -> list[dict]:
        """fastai `fit_one_cycle`; lr_max: float, slice or per-group values."""
        spe = self.dls.steps_per_epoch
        lrs, moms = one_cycle(epochs * spe, lr_max, pct_start, div, div_final)
        return self.fit_phases([Phase(frozen, epochs, spe, lrs, moms)])

    def fine_tune(self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1,
                  lr_mult: float = 100, pct_start: float = 0.3, div: float = 5.0) -> list[dict]:
        """fastai `fine_tune`: frozen one-cycle, then unfrozen one-cycle with discriminative lrs."""
        plan = fine_tune_plan(epochs, self.dls.steps_per_epoch, base_lr, freeze_epochs,
                              lr_mult, pct_start, div)
        return self.fit_phases([p for p in plan if p.epochs > 0])

    # ----------------------------------------------------------------- the loop
    def fit_phases(self, phases: list[Phase]) -> list[dict]:
        """Run each phase (fresh optimizer state at each), epoch by epoch, validating after each.

        Returns the epoch rows. SIGINT/SIGTERM saves a checkpoint mid-epoch and raises
        StopRequested; `resume()` before this call continues from the newest checkpoint. Checkpoints
        (see the class) are on disk when this returns or raises.
        """
        if any(p.epochs > 0 for p in phases):
            self.dls.check_fit()
        first, start, resumed = self._resume_point(phases)
        try:
            with StopSignal() as signals:
                for p in range(first, len(phases)):
                    if phases[p].epochs > 0:
                        self._run_phase(phases, p, signals, start, resumed)
                    start, resumed = 0, None
        finally:
            if self.checkpoints is not None:
                self.checkpoints.wait()
        return self.history

    def _resume_point(self, phases: list[Phase]) -> tuple[int, int, tuple | None]:
        """(phase, step in it, (optimizer state, SmoothLoss) or None) to start `phases` from: the
        start, or where the checkpoint `resume()` loaded was saved (a phase's end: the next one's
        start, fresh); the loaded checkpoint is used up."""
        resume, self._resume = self._resume, None
        if resume is None:
            return 0, 0, None
        first, start = locate_step(phases, resume["step"])
        if start == 0:
            return first, 0, None
        if phases[first].frozen != resume["frozen"]:
            saved, here = ("frozen", "unfrozen") if resume["frozen"] else ("unfrozen", "frozen")
            raise PmlError(f"the checkpoint at step {resume['step']} has the body {saved}, this schedule has it "
                           f"{here} there: resume with the schedule of the interrupted run")
        return first, start, (resume["opt_state"], SmoothLoss(**resume["smooth_loss"]))

    def _run_phase(self, phases: list[Phase], p: int, signals, start: int, resumed) -> None:
        """Phase `p` of `phases` from its step `start`; resumed: (optimizer state, SmoothLoss)
        of a checkpoint `start` steps in, or None for a fresh start."""
        phase, spe = phases[p], phases[p].steps_per_epoch
        self._wait_ahead("train", phase.frozen)
        setup = setup_phase(self.model, self.params, self.batch_stats, phase.frozen, wd=self.wd, dtype=self.dtype)
        opt_state, self.smooth_loss = resumed or (setup.opt_state, SmoothLoss())
        state = TrainState(self.params, self.batch_stats, replicate(opt_state, self.mesh))
        data_epoch0 = sum(ph.epochs for ph in phases[:p])
        lrs = np.asarray(phase.lrs, np.float32)  # indexed on the host: no device program per phase
        moms = np.asarray(phase.moms, np.float32)
        step0 = phase_starts(phases)[p]
        for epoch in range(start // spe, phase.epochs):
            t0, first = time.perf_counter(), max(start - epoch * spe, 0)
            bar = tqdm(total=spe, initial=first, leave=False, disable=None if self.progress else True,
                       desc=f"{'frozen ' if phase.frozen else ''}epoch {epoch + 1}/{phase.epochs}")
            pending = None  # (step, loss): read after the next step is dispatched, keeping the device busy
            waits = WaitClock()
            batches = waits.wrap(self.dls.train(data_epoch0 + epoch, start_step=first))
            for i, batch in enumerate(batches, first):
                s = epoch * spe + i
                key = jax.random.fold_in(self.key, step0 + s)
                state, loss = setup.step(state, self._train_batch(batch), lrs[s], moms[s], key)
                if pending is not None:
                    self._record(*pending, phase, step0, bar)
                pending = (s, loss)
                if i + 1 < spe and signals.should_stop():  # at an epoch's last step: finish it
                    self._record(*pending, phase, step0, bar)
                    self._adopt(state)
                    self._save(step0 + s + 1, state.opt_state, phase.frozen)
                    raise StopRequested(f"stopped by signal {signals.agreed} at step {step0 + s + 1}")
            if pending is not None:
                self._record(*pending, phase, step0, bar)
            bar.close()
            train_seconds = time.perf_counter() - t0
            self._adopt(state)
            valid = self.validate()
            end = step0 + (epoch + 1) * spe
            row = {"phase": p, "epoch": epoch, "step": end, "train_loss": self.smooth_loss.value,
                   **valid, "time": time.perf_counter() - t0,
                   "train_img_s": (spe - first) * self.dls.batch_size / train_seconds,
                   "input_wait": waits.seconds / train_seconds}
            self._log_row(row, end)
            stop = signals.should_stop(now=True)
            # a phase's last epoch always saves: resuming there starts the next phase
            if stop or epoch + 1 == phase.epochs or self._checkpoint_due():
                self._save(end, state.opt_state, phase.frozen)
            if stop:
                raise StopRequested(f"stopped by signal {signals.agreed} at step {end}, the end of an epoch")

    def _record(self, s: int, loss, phase: Phase, step0: int, bar) -> None:
        """Check and log the loss of step `s` of `phase` (global step step0 + s) and smooth it."""
        value = float(loss)
        if not math.isfinite(value):
            raise PmlError(f"training diverged: loss is {value} at global step {step0 + s} (step {s} "
                           "of its phase); the last checkpoint is kept; lower the learning rate")
        self.step_losses.append(value)
        smoothed = self.smooth_loss.add(value)
        bar.update(1)
        bar.set_postfix(loss=f"{smoothed:.4f}")
        if self.writer is not None:
            self.writer.scalars(step0 + s, {"train/loss": value, "train/smooth_loss": smoothed,
                                            "train/mom": phase.moms[s],
                                            **{f"train/lr_group{g}": lr for g, lr in enumerate(phase.lrs[s])}})

    def _train_batch(self, batch: dict) -> dict:
        """A host train batch -> the step's input on the mesh. Crop buffers (augment on the device)
        are resized by the loaders' own jitted function, dispatched just before the step: the step
        stays one compiled program per phase whatever the input path, and show_batch draws exactly
        what it trains on."""
        return self.dls.finish(shard_batch(batch, self.mesh))

    def _adopt(self, state: TrainState) -> None:
        self.params, self.batch_stats = state.params, state.batch_stats

    # ----------------------------------------------------------------- evaluation
    def get_preds(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(probs [N,C], targets [N,C], mask [N], loss [N]) over the validation split, padded rows masked.

        The last validation's when params, stats and loaders are still the ones it ran with (after a
        fit: its last epoch's); otherwise predicted now."""
        inputs = (self.params, self.batch_stats, self.dls)
        if self._preds is not None and all(a is b for a, b in zip(self._preds[0], inputs)):
            return self._preds[1]
        self._wait_ahead("eval")
        preds = predict_batches(self.model, {"params": self.params, "batch_stats": self.batch_stats},
                                self.dls.valid(), self.mesh, self.dtype,
                                progress="validating" if self.progress else None)
        self._preds = (inputs, preds)
        return preds

    def validate(self) -> dict:
        """valid_loss (mean over real items), accuracy_multi at `thresh` and mAP."""
        probs, targs, mask, loss = self.get_preds()
        metrics, loss, mask = jax.device_get((epoch_metrics(probs, targs, mask, thresh=self.thresh), loss, mask))
        valid_loss = float(np.asarray(loss)[np.asarray(mask)].mean(dtype=np.float64))
        return {"valid_loss": valid_loss, "accuracy_multi": float(metrics["accuracy_multi"]),
                "mAP": float(metrics["mAP"])}

    # ----------------------------------------------------------------- lr_find
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                frozen: bool = False, method: str = "valley") -> dict:
        """fastai `lr_find`: exponential lrs, smoothed loss, stop on divergence, suggestion.

        The learner's params and stats are left exactly as they were. Returns
        {'lrs', 'losses' (smoothed), 'suggestion', 'point'}.
        """
        lrs_all = lr_find_schedule(start_lr, end_lr, num_it)
        self._wait_ahead("train", frozen)
        setup = setup_phase(self.model, self.params, self.batch_stats, frozen, wd=self.wd, dtype=self.dtype)
        state = TrainState(jax.tree.map(jnp.copy, self.params), jax.tree.map(jnp.copy, self.batch_stats),
                           replicate(setup.opt_state, self.mesh))
        smoother, lrs, smoothed = SmoothLoss(), [], []
        for i, (lr, batch) in enumerate(zip(lrs_all, self._endless_train_batches())):
            state, loss = setup.step(state, self._train_batch(batch), np.full((N_GROUPS,), lr, np.float32),
                                     np.float32(0.9), jax.random.fold_in(self.key, i))
            smoothed.append(smoother.add(float(loss)))
            lrs.append(float(lr))
            if lr_find_should_stop(smoothed, num_it):  # NaNs run on, as in fastai
                break
        suggestion, point = lr_find_suggestion(lrs, smoothed, num_it, method)
        return {"lrs": lrs, "losses": smoothed, "suggestion": suggestion, "point": point}

    def _endless_train_batches(self):
        epoch = 0
        while True:
            yield from self.dls.train(epoch)
            epoch += 1

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_due(self) -> bool:
        """Whether `checkpoint_seconds` passed since the last save (process 0's clock decides for all)."""
        due = time.monotonic() - self._saved_at >= self.checkpoint_seconds
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
        return due

    def _save(self, step: int, opt_state, frozen: bool) -> None:
        """Checkpoint `step` (the global step): params, stats, the phase's optimizer state, and as
        meta the phase's freeze state, smoothed loss, the epoch rows and the step losses so far."""
        if self.checkpoints is None:
            return
        state = {"params": self.params, "batch_stats": self.batch_stats, "opt_state": opt_state}
        meta = {**self.meta, "frozen": frozen, "smooth_loss": dataclasses.asdict(self.smooth_loss),
                "history": self.history, "step_losses": self.step_losses}
        self.checkpoints.save(step, state, meta)
        self._saved_at = time.monotonic()

    def resume(self) -> bool:
        """Load the newest checkpoint in workdir, if any, so the next fit continues from it.

        Returns whether one was found. Call with the same schedule as the interrupted run.
        """
        step = self.checkpoints.latest_step() if self.checkpoints is not None else None
        if step is None:
            return False
        meta = self.checkpoints.read_meta(step)
        if "smooth_loss" not in meta:
            raise PmlError(f"{self.checkpoints.directory}: checkpoint {step} was written by an older pml_jax and "
                           "cannot be resumed; train again without --resume")
        template = replicate(setup_phase(self.model, self.params, self.batch_stats, meta["frozen"]).opt_state,
                             self.mesh)  # on the mesh, as orbax restores to the template's sharding
        like = {"params": self.params, "batch_stats": self.batch_stats, "opt_state": template}
        state, meta = self.checkpoints.restore(like, step)
        self.params = replicate(state["params"], self.mesh)
        self.batch_stats = replicate(state["batch_stats"], self.mesh)
        self.history = list(meta["history"])
        self.step_losses = list(meta["step_losses"])
        self._write_metrics(self.history, "w")  # drop rows of epochs replayed after a crash
        self._resume = {"step": step, "frozen": meta["frozen"], "smooth_loss": meta["smooth_loss"],
                        "opt_state": state["opt_state"]}
        return True

    # ----------------------------------------------------------------- logging
    def _log_row(self, row: dict, step: int) -> None:
        self.history.append(row)
        if self.writer is not None:
            self.writer.scalars(step, {f"epoch/{k}": v for k, v in row.items() if k not in ("phase", "epoch")})
        if len(self.history) == 1 or self.history[-2]["phase"] != row["phase"]:
            self.log(f"{'epoch':>5} {'train_loss':>10} {'valid_loss':>10} {'accuracy_multi':>14} "
                     f"{'mAP':>7} {'time':>7} {'img/s':>7} {'input':>6}")
        self.log(f"{row['epoch']:>5} {row['train_loss']:>10.6f} {row['valid_loss']:>10.6f} "
                 f"{row['accuracy_multi']:>14.6f} {row['mAP']:>7.4f} {_clock(row['time']):>7} "
                 f"{row['train_img_s']:>7.1f} {row['input_wait']:>6.1%}")
        self._write_metrics([row], "a")

    def _write_metrics(self, rows: list[dict], mode: str) -> None:
        """Append (mode 'a') or rewrite ('w') workdir/metrics.jsonl, one JSON row per epoch."""
        if self.workdir is not None and jax.process_index() == 0:
            self.workdir.mkdir(parents=True, exist_ok=True)
            with open(self.workdir / "metrics.jsonl", mode) as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)


def _abstract(tree):
    """jax.ShapeDtypeStruct of every array of `tree` as jit sees it: a committed array's sharding, none
    for an uncommitted one (ShapeDtypeStructs pass through)."""
    def like(x):
        if isinstance(x, jax.ShapeDtypeStruct):
            return x
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding if x.committed else None,
                                    weak_type=getattr(x, "weak_type", False))  # a PRNG key array has none

    return jax.tree.map(like, tree)


def _sharded_like(shapes: dict, mesh) -> dict:
    """{name: ShapeDtypeStruct} of a global batch from (shape, dtype) pairs, split over `mesh` as
    `shard_batch` splits it."""
    sharding = batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in shapes.items()}


def _clock(seconds: float) -> str:
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"
