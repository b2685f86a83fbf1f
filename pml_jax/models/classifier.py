"""The model: a torchvision ResNet body + a head (fastai's, or torchvision's linear one), and `create_model`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pml_jax.choices import HEADS
from pml_jax.errors import PmlError
from pml_jax.models.head import LinearHead, create_head
from pml_jax.models.resnet import ResNet, init_variables, num_features, resnet
from pml_jax.models.weights import pretrained_variables


class Classifier(nn.Module):
    """`body` then `head`: normalised float NHWC images [B, H, W, 3] -> float32 logits [B, n_out].

    Variables: {'params': {'body', 'head'}, 'batch_stats': {'body', 'head'}} (a linear head has no
    batch_stats: its entry is empty). Train mode needs
    `mutable=['batch_stats']` and rngs={'dropout': key}.
    """

    body: ResNet
    head: nn.Module  # Head (fastai) or LinearHead

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.body(x, train), train)


def create_model(
    arch: str,
    n_out: int,
    pretrained: str | None = None,
    dtype: Any = jnp.float32,
    seed: int = 0,
    head: str = "fastai",
    kernels: str = "auto",
    **head_kwargs,
) -> tuple[Classifier, dict]:
    """Build `arch` + a head for `n_out` outputs and its variables (float32 params).

    pretrained: None (torchvision init from `seed`), 'IMAGENET1K_V1' / 'IMAGENET1K_V2'
    (torchvision, downloaded once), 'timm/<arch>.<tag>' (Hugging Face safetensors) or a local
    .safetensors / .npz / .pth file; its `fc` is dropped. The head is always fresh from `seed`:
    head 'fastai' (fastai's `create_head`, configured by `head_kwargs`: lin_ftrs, ps, concat_pool,
    bn_final, ...) or 'linear' (torchvision's average pool + Linear, see `LinearHead`).
    kernels: the body's conv / max-pool implementations (`pml_jax.models.kernels.KERNELS`; 'auto':
    by the default backend); the variables are the same for every choice.
    """
    if head not in HEADS:
        raise PmlError(f"head={head!r} is not one of {list(HEADS)}")
    if head == "linear" and head_kwargs:
        raise PmlError(f"the linear head takes no options, got {sorted(head_kwargs)}")
    nf = num_features(arch)
    body = resnet(arch, num_classes=None, dtype=dtype, kernels=kernels)
    head_module = create_head(nf, n_out, dtype=dtype, **head_kwargs) if head == "fastai" else LinearHead(n_out)
    body_key, head_key = jax.random.split(jax.random.key(seed))
    head_vars = init_variables(head_module, {"params": head_key}, jnp.zeros((1, 1, 1, nf), jnp.float32))
    if pretrained is None:
        body_vars = init_variables(body, body_key, jnp.zeros((1, 32, 32, 3), jnp.float32))
    else:
        body_vars = pretrained_variables(arch, pretrained, with_fc=False)
    variables = {col: {"body": body_vars[col], "head": head_vars.get(col, {})}
                 for col in ("params", "batch_stats")}
    return Classifier(body, head_module), variables
