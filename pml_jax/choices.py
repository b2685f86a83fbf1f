"""Lists of choices that the model and data layers accept (architectures, heads, data sources, VOC
validation splits, ...), in a module free of jax, flax and pandas so the run config can validate a
choice before anything is built or read."""

# arch -> (block kind, blocks per stage) of the torchvision ResNets
ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# classifier heads: fastai's create_head (for fine-tuning) or torchvision's avg pool + Linear
HEADS = ("fastai", "linear")
# data sources (pml_jax.data.sources maps each name to its loader)
SOURCES = ("synthetic", "pascal_2007", "voc", "tfds", "csv")
# VOCdevkit source: the validation split, the official val list or the test list
VOC_VALID_SPLITS = ("val", "test")
# the decoded-image cache: auto = RAM when the decoded split fits a share of the available memory
CACHE_MODES = ("auto", "ram", "none")
# where train crops are resized: auto = device on GPUs/TPUs, host on a CPU backend (see pml_jax.data.loaders)
AUGMENT_MODES = ("auto", "device", "host")
# RandomResizedCrop's smallest area fraction: fastai's default
MIN_SCALE = 0.35
# train JPEGs decoded at a reduced DCT scale when the crop allows (no cache, host crops): 1.3-2.3x the
# exact path's images/s in bench/pipeline.py, mean |difference| to fastai's pixels 0.7-2.4 levels
# of 255; False reproduces fastai bit for bit
FAST_DECODE = True
# the least minutes between two end-of-epoch checkpoints within a training phase (0: every epoch); a
# phase's last epoch and a stop signal always save
CHECKPOINT_MINUTES = 5.0
