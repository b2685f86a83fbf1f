"""Where pml_jax keeps downloads, generated datasets and the compilation cache."""

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$PML_JAX_HOME` (default `~/.cache/pml_jax`) joined with `parts`, created on demand."""
    root = Path(os.environ.get("PML_JAX_HOME") or Path.home() / ".cache" / "pml_jax")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
