"""JAX's persistent compilation cache, on by default in the pml_jax cache dir."""

import os

import jax

from pml_jax.paths import cache_dir


def enable_compile_cache() -> str:
    """Cache compiled XLA programs under `$PML_JAX_CACHE_XLA` or `cache_dir('xla')`, so a second run
    of the same model starts fast; returns the folder. Every program is kept, the small ones too
    (a few KB each): a run compiles dozens of them, ~1 s in all on a 2-core CPU."""
    folder = os.environ.get("PML_JAX_CACHE_XLA") or str(cache_dir("xla"))
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    return folder
