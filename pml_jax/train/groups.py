"""fastai's parameter groups, freeze mask and weight-decay mask for a ResNet + head param tree.

The trees follow the model contract: ``params = {'body': {conv1, bn1, layer1..layer4}, 'head': {...}}``
and ``batch_stats`` holds the same paths for every BatchNorm module. All masks are pytrees with the
structure of ``params`` holding plain Python ints/bools, so they are static under ``jax.jit``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

from pml_jax.errors import PmlError

N_GROUPS = 3
# fastai `_resnet_split`: [stem + layer1 + layer2], [layer3 + layer4], [head].
_BODY_GROUP = {"conv1": 0, "bn1": 0, "layer1": 0, "layer2": 0, "layer3": 1, "layer4": 1}


def _map_with_path(fn, tree: Any) -> Any:
    """Apply ``fn(path: tuple[str, ...], leaf)`` to every leaf, keeping the tree structure."""
    flat = traverse_util.flatten_dict(dict(tree))
    return traverse_util.unflatten_dict({path: fn(path, leaf) for path, leaf in flat.items()})


def _group_of(path: tuple[str, ...]) -> int:
    if path[0] == "head":
        return N_GROUPS - 1
    if path[0] == "body" and len(path) > 1 and path[1] in _BODY_GROUP:
        return _BODY_GROUP[path[1]]
    raise PmlError(f"param {'/'.join(path)!r} is neither body/{{{', '.join(_BODY_GROUP)}}} nor head")


def param_groups(params: Any) -> Any:
    """Group label (0, 1, 2) of every param leaf: [stem+layer1+layer2], [layer3+layer4], [head]."""
    return _map_with_path(lambda path, _: _group_of(path), params)


def _batchnorm_mask(params: Any, batch_stats: Any) -> Any:
    """True for leaves of BatchNorm modules: a params module is BN iff its path is in batch_stats."""
    bn_modules = {path[:-1] for path in traverse_util.flatten_dict(dict(batch_stats))}
    return _map_with_path(lambda path, _: path[:-1] in bn_modules, params)


def trainable_mask(params: Any, batch_stats: Any, frozen: bool) -> Any:
    """True for params that get gradients: all when unfrozen; when frozen (fastai `freeze` with
    train_bn=True) only the last group (head) plus every BatchNorm scale/bias of the body."""
    if not frozen:
        return jax.tree.map(lambda _: True, params)
    return jax.tree.map(
        lambda group, is_bn: group == N_GROUPS - 1 or is_bn,
        param_groups(params),
        _batchnorm_mask(params, batch_stats),
    )


def decay_mask(params: Any, batch_stats: Any) -> Any:
    """True for params that get weight decay: all but BatchNorm params and biases (wd_bn_bias=False)."""
    return _map_with_path(
        lambda path, is_bn: not is_bn and path[-1] != "bias",
        _batchnorm_mask(params, batch_stats),
    )


def split_trainable(params: Any, mask: Any) -> tuple[Any, Any]:
    """Split ``params`` into (trainable, frozen): two trees of its structure, None where the other holds.

    Differentiate w.r.t. ``trainable`` only; its gradient tree then has None at frozen leaves, which
    the optimizer skips entirely, exactly as fastai skips params without a grad.
    """
    trainable = jax.tree.map(lambda p, m: p if m else None, params, mask)
    frozen = jax.tree.map(lambda p, m: None if m else p, params, mask)
    return trainable, frozen


def merge_trainable(trainable: Any, frozen: Any) -> Any:
    """Inverse of `split_trainable`: the full param tree."""
    return jax.tree.map(
        lambda t, f: f if t is None else t, trainable, frozen, is_leaf=lambda x: x is None
    )


def lr_range(lr: float | slice | Any, n_groups: int = N_GROUPS) -> np.ndarray:
    """Per-group learning rates [n_groups] (float64), as fastai's `set_hyper('lr', lr)`.

    ``slice(hi)`` -> [hi/10, ..., hi/10, hi]; ``slice(lo, hi)`` -> geometric lo..hi (`even_mults`);
    a float -> all equal; a sequence of n_groups values -> as given.
    """
    if isinstance(lr, slice):
        if lr.stop is None:
            raise PmlError(f"learning-rate slice needs a stop value, got {lr!r}")
        if lr.start:  # fastai tests truthiness: slice(0, hi) behaves like slice(hi)
            if n_groups == 1:
                return np.array([float(lr.stop)])
            step = (lr.stop / lr.start) ** (1 / (n_groups - 1))
            return np.array([lr.start * step**i for i in range(n_groups)], dtype=np.float64)
        return np.array([lr.stop / 10] * (n_groups - 1) + [lr.stop], dtype=np.float64)
    try:
        values = np.atleast_1d(np.asarray(lr, dtype=np.float64))
    except (TypeError, ValueError) as e:
        raise PmlError(f"learning rate {lr!r} is not a number, slice or sequence of numbers") from e
    if values.ndim != 1 or len(values) not in (1, n_groups):
        raise PmlError(f"learning rate {lr!r}: expected a float, a slice or {n_groups} values")
    return np.broadcast_to(values, (n_groups,)).copy()
