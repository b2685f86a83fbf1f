"""The public API: every exported name resolves, and importing pml_jax stays light."""

import subprocess
import sys

import pml_jax


def test_every_exported_name_resolves():
    for name in pml_jax.__all__:
        assert getattr(pml_jax, name) is not None, name


def test_import_does_not_load_tensorflow_flax_or_pandas():
    code = ("import sys, pml_jax; from pml_jax import accuracy_multi; "
            "print(sorted(m for m in ('tensorflow', 'flax', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
