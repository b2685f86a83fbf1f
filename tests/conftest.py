"""Hermetic test environment: CPU only, quiet TensorFlow, a private cache dir, no network."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["PML_JAX_HOME"] = tempfile.mkdtemp(prefix="pml_jax_test_home_")
os.environ["HF_HUB_OFFLINE"] = "1"

import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Identical programs compiled by different tests (each Learner jits its own steps) hit this cache.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["PML_JAX_HOME"], "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    """The committed reference fixtures (generated once by the scripts beside them)."""
    return FIXTURES
