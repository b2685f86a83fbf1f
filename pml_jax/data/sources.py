"""Every data source behind one name: `load_source(name, ...)`, a name of `pml_jax.choices.SOURCES`."""

from __future__ import annotations

import inspect

from pml_jax import choices
from pml_jax.data.dataset import LabelledImages
from pml_jax.data.pascal import pascal_2007
from pml_jax.data.synthetic import synthetic
from pml_jax.data.tables import from_csv
from pml_jax.data.tfds_voc import tfds_voc
from pml_jax.data.voc import voc
from pml_jax.errors import PmlError

# name (pml_jax.choices.SOURCES, in its order) -> the loader it calls
SOURCES = dict(zip(choices.SOURCES, (synthetic, pascal_2007, voc, tfds_voc, from_csv), strict=True))

__all__ = ["SOURCES", "load_source", "pascal_2007", "voc", "tfds_voc", "from_csv", "synthetic"]


def load_source(source: str, /, **kwargs) -> LabelledImages:
    """Call the data source named `source` with `kwargs`; an unknown source or argument raises PmlError."""
    if source not in SOURCES:
        raise PmlError(f"unknown data source {source!r}; valid: {sorted(SOURCES)}")
    fn = SOURCES[source]
    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise PmlError(f"data source {source!r}: {e}; signature {fn.__name__}{inspect.signature(fn)}") from None
    return fn(**kwargs)
