"""`run.py` with one injected fault, for tests/test_reliability.py (a subprocess per run).

    python tests/reliability_worker.py FAULT ARG [run.py flags...]

FAULT ARG:
  kill-in-save ID:STAGE   SIGKILL this process while orbax saves training checkpoint ID; STAGE is
                          'create' (the temporary folder was just made) or 'commit' (everything is
                          written, the atomic rename has not happened)
  nan-at STEP             the targets of global train step STEP are NaN, so its loss is NaN
  delete-at EPOCH:PATH    rename PATH to PATH.away when the train batches of (global) epoch EPOCH
                          are requested: after the up-front image check, before that epoch reads it
Exits with run.py's status (unless killed).
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np


def kill_in_save(arg: str) -> None:
    """Patch orbax's atomic-rename temporary path to SIGKILL us at `STAGE` of checkpoint `ID`."""
    from orbax.checkpoint._src.path import atomicity

    step, stage = arg.split(":")
    cls = atomicity.AtomicRenameTemporaryPath
    original = {"create": cls.create, "commit": cls.finalize}[stage]

    def targeted(path) -> bool:
        final = path.get_final()
        return final.name == step and final.parent.name == "checkpoints"

    async def create(self, *args, **kwargs):
        out = await original(self, *args, **kwargs)
        if targeted(self):
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    async def finalize(self, *args, **kwargs):
        if targeted(self):
            os.kill(os.getpid(), signal.SIGKILL)
        return await original(self, *args, **kwargs)

    if stage == "create":
        cls.create = create
    else:
        cls.finalize = finalize


def _patch_train(wrap) -> None:
    """Replace DataLoaders.train(epoch, start_step) by wrap(dls, epoch, start_step, original)."""
    from pml_jax.data.loaders import DataLoaders

    original = DataLoaders.train
    DataLoaders.train = lambda self, epoch, start_step=0: wrap(self, epoch, start_step, original)


def nan_at(arg: str) -> None:
    at = int(arg)

    def wrap(dls, epoch, start_step, original):
        spe = dls.steps_per_epoch
        for i, batch in enumerate(original(dls, epoch, start_step), start_step):
            if epoch * spe + i == at:
                batch = {**batch, "target": np.full_like(batch["target"], np.nan)}
            yield batch

    _patch_train(wrap)


def delete_at(arg: str) -> None:
    epoch_text, path = arg.split(":", 1)

    def wrap(dls, epoch, start_step, original):
        if epoch == int(epoch_text) and os.path.exists(path):
            os.rename(path, path + ".away")  # before the pipeline reads the image headers
        return original(dls, epoch, start_step)

    _patch_train(wrap)


FAULTS = {"kill-in-save": kill_in_save, "nan-at": nan_at, "delete-at": delete_at}

if __name__ == "__main__":
    fault, arg, *flags = sys.argv[1:]
    FAULTS[fault](arg)
    from pml_jax.cli import main

    sys.exit(main(flags))
