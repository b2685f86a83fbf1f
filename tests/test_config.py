"""Config validation, the presets and the flags built from the fields."""

import dataclasses

import pytest

from pml_jax.choices import HEADS, SOURCES
from pml_jax.cli import config_from, parser
from pml_jax.config import Config, preset
from pml_jax.errors import PmlError


def test_fastbook_preset_is_the_chapter():
    cfg = preset("fastbook")
    assert (cfg.source, cfg.arch, cfg.pretrained, cfg.size, cfg.min_scale, cfg.batch_size) == (
        "pascal_2007", "resnet50", "IMAGENET1K_V1", 128, 0.35, 64)
    assert (cfg.schedule, cfg.epochs, cfg.freeze_epochs, cfg.base_lr, cfg.thresh) == ("fine_tune", 3, 4, 3e-3, 0.2)
    assert (cfg.lr_mult, cfg.pct_start, cfg.wd, cfg.flip, cfg.fast_decode) == (100.0, 0.3, 0.01, False, False)


@pytest.mark.parametrize("changes, message", [
    ({"source": "imagenet"}, "source='imagenet'"),
    ({"head": "mlp"}, "head='mlp'"),
    ({"epochs": 0}, "epochs must be positive"),
    ({"min_scale": 0.0}, "min_scale"),
    ({"thresh": -0.1}, "thresh"),
    ({"checkpoint_minutes": -1.0}, "checkpoint_minutes must be >= 0"),
    ({"no_such": 1}, "unknown config field"),
])
def test_bad_values_are_refused(changes, message):
    with pytest.raises(PmlError, match=message):
        Config().replace(**changes)


def test_flags_override_the_preset_and_none_clears_weights():
    args = parser().parse_args(["--preset", "fastbook", "--epochs", "5", "--pretrained", "none", "--flip", "true"])
    cfg = config_from(args)
    assert (cfg.epochs, cfg.pretrained, cfg.flip, cfg.arch) == (5, None, True, "resnet50")
    assert cfg.head == "fastai" and config_from(parser().parse_args([])).head == "linear"
    assert config_from(parser().parse_args(["--head", "fastai"])).head == "fastai"


def test_unknown_preset_is_refused():
    with pytest.raises(PmlError, match="unknown preset"):
        preset("imagenet")


def test_each_config_field_is_a_flag_with_the_fields_help_and_choices():
    flags = {a.dest: a for a in parser()._actions}
    for f in dataclasses.fields(Config):
        flag = flags[f.name]
        assert flag.help.startswith(f.metadata["help"]), f.name
        assert flag.choices == f.metadata["choices"], f.name
    assert flags["source"].choices == SOURCES and flags["head"].choices == HEADS
