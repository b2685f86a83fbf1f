"""Subprocess worker for tests/test_devices.py: trains a tiny set on a given device layout.

usage: devices_worker.py DATA_ROOT OUT.json local [N_DEVICES]
       devices_worker.py DATA_ROOT OUT.json dist PROCESS_ID PORT [WORKDIR EPOCHS SIGTERM_AT]
Writes {'losses': per-step train losses, 'valid_loss', 'checksum', 'devices', 'stopped'} (each
process its own OUT). With WORKDIR it resumes from and checkpoints into WORKDIR, trains EPOCHS
epochs, and process 1 sends itself SIGTERM as it fetches train batch SIGTERM_AT (-1: never);
'stopped' is then the StopRequested message, else None.
The device count is set through XLA_FLAGS by the caller, before jax starts.
"""

import json
import sys

import jax
import numpy as np


class Losses:
    def __init__(self):
        self.values = []

    def scalars(self, step, values):
        if "train/loss" in values:
            self.values.append(float(values["train/loss"]))


def main():
    data_root, out, how = sys.argv[1:4]
    if how == "dist":
        from pml_jax.train.mesh import initialize_distributed

        initialize_distributed(f"127.0.0.1:{sys.argv[5]}", num_processes=2, process_id=int(sys.argv[4]))
    from tiny import Hooked, sigterm_at, tiny_dls, tiny_model

    from pml_jax.train.interrupt import StopRequested
    from pml_jax.train.learner import Learner
    from pml_jax.train.mesh import make_mesh

    devices = jax.devices()[: int(sys.argv[4])] if how == "local" else jax.devices()
    workdir, epochs, sigterm_step = sys.argv[6:9] if len(sys.argv) > 6 else (None, 1, -1)
    dls = tiny_dls(data_root)
    if jax.process_index() == 1 and int(sigterm_step) >= 0:
        dls = Hooked(dls, sigterm_at(int(sigterm_step)))
    model, variables = tiny_model(len(dls.vocab))
    writer = Losses()
    learn = Learner(model, variables, dls, mesh=make_mesh(devices), progress=False, log=lambda _: None,
                    writer=writer, workdir=workdir)
    stopped = None
    try:
        learn.resume()
        learn.fit_one_cycle(int(epochs), 1e-3)
    except StopRequested as e:
        stopped = str(e)
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum()
                         for x in jax.tree.leaves(jax.device_get(learn.params))))
    with open(out, "w") as f:
        json.dump({"losses": writer.values, "step_losses": learn.step_losses, "stopped": stopped,
                   "valid_loss": learn.history[-1]["valid_loss"] if learn.history else None,
                   "checksum": checksum, "devices": len(devices)}, f)


if __name__ == "__main__":
    main()
