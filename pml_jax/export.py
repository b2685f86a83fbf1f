"""The run's model: built from its config, exported into <workdir>/model once trained, loaded back
by evaluate and predict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from pml_jax.config import Config
from pml_jax.errors import PmlError
from pml_jax.models import create_model
from pml_jax.train.checkpoint import Checkpoints
from pml_jax.train.precision import compute_dtype


def build_model(cfg: Config, n_out: int, pretrained: str | None):
    """(model, variables): the config's arch, head, compute dtype and seed for `n_out` classes,
    the body from `pretrained` weights (None: initialised from the seed)."""
    return create_model(cfg.arch, n_out, pretrained, dtype=compute_dtype(cfg.dtype), seed=cfg.seed, head=cfg.head)


def export_model(path: Path, variables: dict, cfg: Config, vocab: Sequence[str], summary: dict) -> None:
    """Save `variables` (params, batch_stats) with the config, vocab and the thresholds the results
    stage chose (`summary`) as the run's final model."""
    meta = {"config": json.loads(cfg.to_json()), "vocab": list(vocab), "thresh": cfg.thresh,
            "best_thresh": summary["best_thresh"], "per_class_thresholds": summary["per_class_thresholds"]}
    with Checkpoints(path, keep=1) as store:  # a new step: the previous export stays until this one is complete
        store.save((store.latest_step() or 0) + 1,
                   {"params": variables["params"], "batch_stats": variables["batch_stats"]}, meta)


def load_model(workdir: str | Path):
    """(model, variables, meta) of the final model exported in `workdir` (read only)."""
    path = Path(workdir) / "model"
    store = Checkpoints.existing(path)
    if store is None:
        raise PmlError(f"no trained model in {path}: run training with this --workdir first")
    with store:
        meta = store.read_meta()
        model, variables = build_model(Config(**meta["config"]), len(meta["vocab"]), None)
        variables, meta = store.restore({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    return model, variables, meta
