"""Shared helpers for training tests: a tiny torchvision-shaped ResNet + fastai head, tiny data."""

import os
import signal

import jax
import jax.numpy as jnp

from pml_jax.data.loaders import DataLoaders
from pml_jax.data.synthetic import synthetic
from pml_jax.models.classifier import Classifier
from pml_jax.models.head import create_head
from pml_jax.models.resnet import ResNet


def tiny_model(n_out: int, seed: int = 0):
    """A one-block-per-stage basic ResNet body (same param names as resnet18) + fastai head."""
    model = Classifier(ResNet("basic", (1, 1, 1, 1), None), create_head(512, n_out))
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k},
                                             jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.key(seed))
    return model, variables


def tiny_dls(root, n_images: int = 40, size: int = 32, batch_size: int = 8, **kwargs) -> DataLoaders:
    """A small synthetic set (generated into `root`) with its loaders."""
    items = synthetic(root=root, n_images=n_images, min_side=40, max_side=64)
    return DataLoaders(items, size=size, batch_size=batch_size, seed=1, **kwargs)


class Hooked:
    """DataLoaders stand-in yielding `hook(n, batch)` for train batch n (counted over all epochs):
    the hook may act (send a signal, delete a file) and returns the batch to train on."""

    def __init__(self, dls, hook):
        self.dls, self.hook, self.seen = dls, hook, 0

    def __getattr__(self, name):
        return getattr(self.dls, name)

    def train(self, epoch, start_step=0):
        for batch in self.dls.train(epoch, start_step):
            batch = self.hook(self.seen, batch)
            self.seen += 1
            yield batch


def sigterm_at(at: int):
    """A Hooked hook that sends SIGTERM to this process as it yields train batch `at`."""

    def hook(n, batch):
        if n == at:
            os.kill(os.getpid(), signal.SIGTERM)
        return batch

    return hook
