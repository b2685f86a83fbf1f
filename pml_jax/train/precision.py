"""The compute dtype of a run: `--dtype auto | float32 | bfloat16`.

Only activations and matmul / convolution inputs take it: params, optimizer state, BatchNorm
statistics, the loss and the metrics stay float32 whatever it is. "auto" is bfloat16 where the
hardware computes it natively and float32 elsewhere:
  TPU          bfloat16 (its matrix units' native input type)
  NVIDIA GPU   bfloat16 from compute capability 8.0 (Ampere: A100, RTX 30xx; Hopper, ...); older
               GPUs emulate it, slower than float32
  AMD GPU      bfloat16 on gfx908 (MI100), gfx90a (MI200), gfx94x/95x (MI300/MI350) and RDNA3+
               (gfx11xx/gfx12xx), which have bf16 matrix instructions; float32 on the others
  CPU / other  float32 (the demo's accuracy was checked in float32)
The module top imports no jax, so the run config can list the choices without loading jax.
"""

from __future__ import annotations

from typing import Any

from pml_jax.errors import PmlError

DTYPES = ("auto", "float32", "bfloat16")
NVIDIA_BF16 = (8, 0)  # lowest compute capability with native bf16 tensor cores
ROCM_BF16 = ("gfx908", "gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")  # AMD archs with bf16 matrix ops


def _gpu_has_bf16(device: Any) -> bool:
    """Whether a GPU `device` computes bf16 natively, from its `compute_capability` ('9.0' on
    NVIDIA; 'gfx90a' on ROCm, which may also name its arch in `device_kind`)."""
    capability = str(getattr(device, "compute_capability", ""))
    arch = next((name for name in (capability, str(getattr(device, "device_kind", "")))
                 if name.startswith("gfx")), None)
    if arch is not None:
        return arch.startswith(ROCM_BF16)
    try:
        return tuple(int(part) for part in capability.split(".")[:2]) >= NVIDIA_BF16
    except ValueError:  # no readable capability: stay in float32
        return False


def auto_is_bf16(device: Any) -> bool:
    """Whether "auto" means bfloat16 on `device` (a jax.Device, or anything with its `platform`)."""
    platform = getattr(device, "platform", "cpu")
    if platform == "tpu":
        return True
    return platform in ("gpu", "cuda", "rocm") and _gpu_has_bf16(device)


def compute_dtype(name: str = "auto", device: Any = None):
    """The jnp dtype of `name` (one of `DTYPES`) on `device` (default: the first of `jax.devices()`)."""
    import jax.numpy as jnp

    if name not in DTYPES:
        raise PmlError(f"dtype={name!r} is not one of {list(DTYPES)}")
    if name == "auto":
        if device is None:
            import jax

            device = jax.devices()[0]
        name = "bfloat16" if auto_is_bf16(device) else "float32"
    return jnp.dtype(name)
