"""Read `torch.save` checkpoints without torch: zip format (torch >= 1.6) and the legacy stream.

Unpickling is restricted to what tensors and state_dicts need (OrderedDict, torch's tensor and
parameter rebuild functions, storage classes, dtypes); any other global is refused with a
PmlError before anything runs. Tensors come back as C-contiguous numpy arrays on the host
(bfloat16/float8 as `ml_dtypes` arrays), whatever the device they were saved from.
"""

from __future__ import annotations

import functools
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np
from numpy.lib.stride_tricks import as_strided

from pml_jax.errors import PmlError

_DTYPES = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "complex64": np.complex64,
    "complex128": np.complex128,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint64": np.uint64,
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "bool": np.bool_,
}
_STORAGES = {  # legacy typed storage class -> element dtype
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
_LEGACY_MAGIC, _LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


@dataclass(frozen=True, slots=True)
class _StorageType:
    """A pickled storage class (e.g. `torch.FloatStorage`): its element dtype."""

    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _TorchDType:
    """A pickled torch dtype (e.g. `torch.float32`) as its numpy dtype."""

    dtype: np.dtype


@dataclass(frozen=True, slots=True)
class _Storage:
    """One storage record `key`: `numel` elements of `dtype` (its bytes are read separately)."""

    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor to cut out of `storage` once every storage has been read (geometry in elements)."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: np.dtype
    metadata: dict | None


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2: a tensor of the storage's dtype (geometry in elements)."""
    return _tensor(storage, storage_offset, size, stride, None, metadata)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
):
    """torch._utils._rebuild_tensor_v3: an explicit dtype over an untyped (byte) storage."""
    if not isinstance(dtype, _TorchDType):
        raise PmlError(f"tensor dtype {dtype!r} is not a torch dtype")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """torch._utils._rebuild_parameter(_with_state): an nn.Parameter is just its tensor here."""
    if not isinstance(data, _Tensor):
        raise PmlError(f"parameter data is {type(data).__name__}, not a tensor")
    return data


def _is_int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(type(v) is int for v in value)


def _tensor(storage, offset, size, stride, dtype, metadata) -> _Tensor:
    if not isinstance(storage, _Storage):
        raise PmlError(f"tensor storage is {type(storage).__name__}, not a storage record")
    well_typed = type(offset) is int and _is_int_tuple(size) and _is_int_tuple(stride)
    if not (well_typed and len(size) == len(stride)):
        raise PmlError(f"bad tensor geometry offset={offset!r} size={size!r} stride={stride!r}")
    if min((offset, *size, *stride)) < 0:
        raise PmlError(f"negative tensor geometry offset={offset} size={size} stride={stride}")
    if metadata is not None and not (isinstance(metadata, dict) and set(metadata) <= {"conj", "neg"}):
        raise PmlError(f"unsupported tensor metadata {metadata!r}")
    dtype = storage.dtype if dtype is None else dtype
    return _Tensor(storage, offset, size, stride, dtype, dict(metadata) if metadata else None)


_CALLABLES = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}
_CONSTANTS = {  # immutable (frozen, slotted) stand-ins for torch's storage classes and dtypes
    ("torch.storage", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
    **{("torch", name): _StorageType(np.dtype(_DTYPES[d])) for name, d in _STORAGES.items()},
    **{("torch", name): _TorchDType(np.dtype(dt)) for name, dt in _DTYPES.items()},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the allowed globals; a storage id becomes `storage(dtype, key, numel)`."""

    def __init__(self, file: BinaryIO, storage):
        super().__init__(file)
        self._storage = storage

    def find_class(self, module: str, name: str):
        if (module, name) in _CALLABLES:  # a fresh wrapper: a pickle's BUILD cannot alter the real one
            return functools.partial(_CALLABLES[module, name])
        if (module, name) in _CONSTANTS:
            return _CONSTANTS[module, name]
        raise PmlError(f"refusing to unpickle {module}.{name}: not part of a tensor state_dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise PmlError(f"unsupported persistent id {pid!r}")
        _, kind, key, _location, numel, *view = pid
        if not (isinstance(kind, _StorageType) and isinstance(key, str) and type(numel) is int):
            raise PmlError(f"bad storage record {pid!r}")
        if view and view[0] is not None:
            raise PmlError("storage views (torch < 1.0 checkpoints) are not supported")
        return self._storage(kind.dtype, key, numel)


def _buffer(raw: bytes, storage: _Storage, big_endian: bool, where: str) -> np.ndarray:
    """Raw little/big-endian bytes of one storage -> 1-D native array of its `numel` elements."""
    if len(raw) != storage.numel * storage.dtype.itemsize:
        raise PmlError(f"{where}: {len(raw)} bytes for {storage.numel} {storage.dtype} elements (truncated?)")
    data = np.frombuffer(raw, storage.dtype)
    unit = storage.dtype.itemsize // (2 if storage.dtype.kind == "c" else 1)  # complex: swap each half
    if big_endian and unit > 1:
        data = data.view(f"u{unit}").byteswap().view(storage.dtype)
    return data


def _array(t: _Tensor, buffers: dict[str, np.ndarray]) -> np.ndarray:
    """Cut a `_Tensor` out of its storage's buffer: a fresh C-contiguous array."""
    data = buffers[t.storage.key]
    if t.dtype != data.dtype:  # e.g. an untyped byte storage read as float8
        if data.nbytes % t.dtype.itemsize:
            raise PmlError(f"storage of {data.nbytes} bytes does not hold whole {t.dtype} elements")
        data = data.view(t.dtype)
    if 0 in t.size:
        return np.zeros(t.size, t.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= data.size:
        raise PmlError(
            f"tensor size {t.size} stride {t.stride} offset {t.offset} overruns its storage of {data.size}"
        )
    item = data.dtype.itemsize
    view = as_strided(data[t.offset :], t.size, [s * item for s in t.stride], writeable=False)
    out = np.array(view, order="C")
    if t.metadata and t.metadata.get("conj"):
        out = np.conj(out)
    if t.metadata and t.metadata.get("neg"):
        out = np.negative(out)
    return out


def _materialize(obj, buffers: dict[str, np.ndarray]):
    """Replace every `_Tensor` in nested dicts/lists/tuples with its numpy array."""
    if isinstance(obj, _Tensor):
        return _array(obj, buffers)
    if isinstance(obj, dict):
        return type(obj)((k, _materialize(v, buffers)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v, buffers) for v in obj)
    return obj


def _load_zip(zf: zipfile.ZipFile) -> Any:
    """torch >= 1.6: `<name>/data.pkl`, `<name>/data/<key>` raw storages, `<name>/byteorder`."""
    names = set(zf.namelist())
    pkls = sorted(n for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
    if len(pkls) != 1:
        found = pkls or "none"
        raise PmlError(f"expected one '<name>/data.pkl' record, found {found} (not a torch.save file?)")
    prefix = pkls[0][: -len("data.pkl")]
    order = zf.read(prefix + "byteorder") if prefix + "byteorder" in names else b"little"
    if order not in (b"little", b"big"):
        raise PmlError(f"unknown byteorder record {order!r}")
    buffers: dict[str, np.ndarray] = {}

    def storage(dtype: np.dtype, key: str, numel: int) -> _Storage:
        record = _Storage(key, dtype, numel)
        if key not in buffers:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise PmlError(f"missing storage record {name}")
            buffers[key] = _buffer(zf.read(name), record, order == b"big", name)
        return record

    obj = _Unpickler(io.BytesIO(zf.read(pkls[0])), storage).load()
    return _materialize(obj, buffers)


def _load_legacy(f: BinaryIO) -> Any:
    """torch < 1.6: pickles of magic, protocol, sys_info, the object and its storage keys; then per
    storage an int64 element count and its raw bytes, all in the writer's byte order."""
    records: dict[str, _Storage] = {}

    def storage(dtype: np.dtype, key: str, numel: int) -> _Storage:
        return records.setdefault(key, _Storage(key, dtype, numel))

    def unpickle():
        return _Unpickler(f, storage).load()

    if unpickle() != _LEGACY_MAGIC or unpickle() != _LEGACY_PROTOCOL:
        raise PmlError("not a torch.save file (bad magic number or protocol)")
    sys_info = unpickle()
    big = isinstance(sys_info, dict) and sys_info.get("little_endian") is False
    obj, keys = unpickle(), unpickle()
    buffers = {}
    for key in keys:
        record = records[key]
        (numel,) = struct.unpack(">q" if big else "<q", f.read(8))
        if numel != record.numel:
            raise PmlError(f"storage {key}: header says {numel} elements, the pickle {record.numel}")
        buffers[key] = _buffer(f.read(numel * record.dtype.itemsize), record, big, f"storage {key}")
    return _materialize(obj, buffers)


def load(path: str | Path) -> Any:
    """Unpickle a `torch.save` file into plain Python: tensors -> numpy arrays, dicts/lists kept.

    Zip (torch >= 1.6) and legacy (torch < 1.6) formats; the old tar format is refused.
    Raises PmlError naming `path` for anything unreadable or not allowed; runs no pickled code.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return _load_zip(zf)
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":
                raise PmlError("not a torch.save file (neither a zip archive nor a pickle)")
            f.seek(0)
            return _load_legacy(f)
    except PmlError as e:
        raise PmlError(f"torch checkpoint {path}: {e}") from None
    except Exception as e:  # corrupt or truncated: any failure of the zip, pickle or struct readers
        raise PmlError(f"torch checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
