"""The torch-free `.pth` reader: byte-exact against torch 2.14 fixtures, byte orders, refusals."""

import importlib.util
import json
import os
import pickle
import shutil
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pml_jax.errors import PmlError
from pml_jax.models import load_state_dict, port_torchvision, torch_pickle
from pml_jax.models import weights

HERE = Path(__file__).parent / "fixtures" / "torch_pickle"
EXPECTED = json.loads((HERE / "expected.json").read_text())
V3_ONLY = ("u16", "f8")  # not representable in the legacy format (see generate.py)


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


writer = _module("tp_writer", HERE / "writer.py")
rule = _module("tv_rule", HERE.parent / "torchvision" / "rule.py")


@pytest.fixture(autouse=True)
def no_torch(monkeypatch):
    """Make `import torch` fail: the reader must never need it."""
    monkeypatch.setitem(sys.modules, "torch", None)


def assert_matches_torch(loaded: dict, keys) -> None:
    with np.load(HERE / "expected.npz") as z:
        for key in keys:
            a, want = loaded[key], EXPECTED[key]
            assert (a.dtype.name, list(a.shape)) == (want["dtype"], want["shape"]), key
            assert a.flags.c_contiguous and a.flags.owndata, key
            assert a.tobytes() == z[key].tobytes(), key


def test_zip_file_matches_torch_load_byte_for_byte():
    loaded = torch_pickle.load(HERE / "tensors.pth")
    assert isinstance(loaded, OrderedDict) and list(loaded) == list(EXPECTED)
    assert_matches_torch(loaded, EXPECTED)
    # spot-check semantics beyond bytes: views are cut from their storages, not aliased
    assert loaded["bf16"].dtype == ml_dtypes.bfloat16 and loaded["1.num_batches_tracked"].shape == ()
    np.testing.assert_array_equal(loaded["transposed"][2:5, 1:3].T, loaded["offset_view"])
    loaded["shared_a"][:] = 0
    assert np.all(loaded["shared_b"] != 0)


def test_legacy_stream_matches_torch_load():
    loaded = torch_pickle.load(HERE / "legacy.pth")
    keys = [k for k in EXPECTED if k not in V3_ONLY]
    assert list(loaded) == keys
    assert_matches_torch(loaded, keys)


def test_big_endian_archive_reads_the_same_values(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal(5).astype(np.float16),
        "bf16": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
        "i64": np.array(7, np.int64),
        "c64": (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
        "bool": np.array([True, False]),
    }
    for order in ("little", "big"):
        loaded = torch_pickle.load(writer.write_pth(tmp_path / f"{order}.pth", arrays, byteorder=order))
        for key, want in arrays.items():
            assert loaded[key].dtype == want.dtype and loaded[key].tobytes() == want.tobytes(), (order, key)


def test_resnet18_pth_loads_exactly_and_ports(tmp_path):
    meta = json.loads((HERE.parent / "torchvision" / "meta.json").read_text())
    sd = rule.synthetic_state_dict(meta["state_dict_shapes"]["resnet18"], 18)
    sd["bn1.num_batches_tracked"] = np.array(5, np.int64)
    pth = writer.write_pth(tmp_path / "resnet18.pth", sd)
    loaded = load_state_dict(pth)
    assert loaded.keys() == sd.keys()
    assert all(loaded[k].shape == sd[k].shape and np.array_equal(loaded[k], sd[k]) for k in sd)
    ported = port_torchvision(pth, "resnet18")
    conv = ported["params"]["layer2"]["0"]["conv1"]["kernel"]
    np.testing.assert_array_equal(conv, sd["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
    var = ported["batch_stats"]["layer3"]["1"]["bn2"]["var"]
    np.testing.assert_array_equal(var, sd["layer3.1.bn2.running_var"])
    np.testing.assert_array_equal(ported["params"]["fc"]["kernel"], sd["fc.weight"].T)


def test_nested_checkpoint_suffixes_and_converter(tmp_path):
    want = {"weight": (2, 3), "bias": (2,)}
    for suffix in (".pth", ".pt", ".bin"):
        path = shutil.copy(HERE / "nested.pth", tmp_path / f"ckpt{suffix}")
        sd = load_state_dict(path)  # {'epoch': 3, 'model': {...}} -> the model's arrays
        assert {k: v.shape for k, v in sd.items()} == want
    out = tmp_path / "ckpt.safetensors"
    assert weights.main(["convert", str(HERE / "nested.pth"), str(out)]) == 0
    back = load_state_dict(out)
    assert all(np.array_equal(back[k], sd[k]) for k in want)
    scalar = writer.write_pth(tmp_path / "scalar.pth", {"bn.num_batches_tracked": np.array(7, np.int64)})
    assert weights.main(["convert", str(scalar), str(tmp_path / "scalar.npz")]) == 0
    assert load_state_dict(tmp_path / "scalar.npz")["bn.num_batches_tracked"].shape == ()  # stays 0-dim
    bare = tmp_path / "list.pth"
    with zipfile.ZipFile(bare, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps([1, 2], protocol=2))
    with pytest.raises(PmlError, match="list.pth holds a list, not a state_dict"):
        load_state_dict(bare)


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("how", ["system", "exec"])
def test_code_in_the_pickle_is_refused_before_it_runs(tmp_path, legacy, how):
    marker = tmp_path / "pwned"
    exploit = (
        _Exploit(os.system, f"touch {marker}")
        if how == "system"
        else _Exploit(exec, f"open({str(marker)!r}, 'w').close()")
    )
    payload = pickle.dumps(OrderedDict(w=exploit), protocol=2)
    path = tmp_path / "evil.pth"
    if legacy:
        path.write_bytes(payload)
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    with pytest.raises(PmlError, match=r"evil.pth: refusing to unpickle (posix|__builtin__)\.(system|exec)"):
        torch_pickle.load(path)
    assert not marker.exists()


def test_whole_module_pickles_and_forged_tensors_are_refused(tmp_path):
    module = b"\x80\x02" + writer.op_global("torch.nn.modules.linear", "Linear") + b")R."
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", module)
    with pytest.raises(PmlError, match="refusing to unpickle torch.nn.modules.linear.Linear"):
        torch_pickle.load(path)
    four = {"w": np.arange(4, dtype=np.float32)}
    cases = {
        "overruns its storage of 4": (0, (5,), (1,)),
        "overruns its storage of 4 ": (2, (2, 2), (1, 1)),
        "negative tensor geometry": (0, (2,), (-1,)),
        "bad tensor geometry": (0, (2, 2), (1,)),
    }
    for message, geometry in cases.items():
        bad = writer.write_pth(tmp_path / "bad.pth", four, geometry={"w": geometry})
        with pytest.raises(PmlError, match=message.strip()):
            torch_pickle.load(bad)


def test_corrupt_and_foreign_files_raise_pml_error(tmp_path):
    good = (HERE / "tensors.pth").read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good[: len(good) // 2])
    text = tmp_path / "text.pth"
    text.write_text("hello")
    empty_zip = tmp_path / "empty.pth"
    zipfile.ZipFile(empty_zip, "w").close()
    a = {"a": np.ones(3, np.float32)}
    short = writer.write_pth(tmp_path / "short.pth", a, extra={"data/0": b"\0" * 8})
    missing = tmp_path / "missing.pth"
    source = writer.write_pth(tmp_path / "m.pth", a)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(missing, "w") as dst:
        for name in src.namelist():
            if name != "archive/data/0":
                dst.writestr(name, src.read(name))
    not_torch = tmp_path / "int.pth"
    not_torch.write_bytes(pickle.dumps(5, protocol=2))
    cases = {
        truncated: "truncated.pth",
        text: "neither a zip archive nor a pickle",
        empty_zip: "expected one '<name>/data.pkl' record, found none",
        short: "8 bytes for 3 float32 elements",
        missing: "missing storage record archive/data/0",
        not_torch: "bad magic number",
    }
    for path, message in cases.items():
        with pytest.raises(PmlError, match=message):
            load_state_dict(path)
