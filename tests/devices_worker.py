"""Subprocess worker for tests/test_devices.py: trains one tiny epoch on a given device layout.

usage: devices_worker.py DATA_ROOT OUT.json local [N_DEVICES]
       devices_worker.py DATA_ROOT OUT.json dist PROCESS_ID PORT
Writes {'losses': per-step train losses, 'valid_loss', 'checksum'} (process 0 only for dist).
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
    from tiny import tiny_dls, tiny_model

    from pml_jax.train.learner import Learner
    from pml_jax.train.mesh import make_mesh

    devices = jax.devices()[: int(sys.argv[4])] if how == "local" else jax.devices()
    dls = tiny_dls(data_root)
    model, variables = tiny_model(len(dls.vocab))
    writer = Losses()
    learn = Learner(model, variables, dls, mesh=make_mesh(devices), progress=False, log=lambda _: None,
                    writer=writer)
    learn.fit_one_cycle(1, 1e-3)
    checksum = float(sum(np.abs(np.asarray(x, np.float64)).sum()
                         for x in jax.tree.leaves(jax.device_get(learn.params))))
    if jax.process_index() == 0:
        with open(out, "w") as f:
            json.dump({"losses": writer.values, "valid_loss": learn.history[-1]["valid_loss"],
                       "checksum": checksum, "devices": len(devices)}, f)


if __name__ == "__main__":
    main()
