"""torchvision-exact ResNets, the fastai and linear heads, the fine-tuning classifier and weight porting."""

from pml_jax.choices import ARCHS, HEADS
from pml_jax.models.classifier import Classifier, create_model
from pml_jax.models.head import Head, LinearHead, concat_pool, create_head
from pml_jax.models.kernels import KERNELS, resolve_kernels
from pml_jax.models.resnet import BatchNorm, ResNet, init_variables, num_features, resnet
from pml_jax.models.weights import fetch, load_state_dict, port_torchvision, pretrained_variables

__all__ = [
    "ARCHS",
    "BatchNorm",
    "Classifier",
    "HEADS",
    "Head",
    "KERNELS",
    "LinearHead",
    "ResNet",
    "concat_pool",
    "create_head",
    "create_model",
    "fetch",
    "init_variables",
    "load_state_dict",
    "num_features",
    "port_torchvision",
    "pretrained_variables",
    "resnet",
    "resolve_kernels",
]
