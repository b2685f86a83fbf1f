"""Weight porting: key/shape checks, file formats, named downloads from a local server, offline errors."""

import hashlib
import importlib.util
import socket
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from pml_jax.errors import PmlError
from pml_jax.models import create_model, fetch, load_state_dict, port_torchvision, pretrained_variables
from pml_jax.models import weights

_spec = importlib.util.spec_from_file_location(
    "tv_rule", __file__.rsplit("/", 1)[0] + "/fixtures/torchvision/rule.py"
)
rule = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rule)
META, _ = rule.load_fixtures()


@pytest.fixture(scope="module")
def sd18():
    """A complete synthetic torchvision resnet18 state_dict (numpy)."""
    return rule.synthetic_state_dict(META["state_dict_shapes"]["resnet18"], 18)


@pytest.fixture(scope="module")
def st18(sd18, tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "resnet18.safetensors"
    save_file(sd18, str(path))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PML_JAX_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_port_layouts(sd18):
    v = port_torchvision(sd18, "resnet18")
    np.testing.assert_array_equal(
        v["params"]["layer2"]["0"]["conv1"]["kernel"], sd18["layer2.0.conv1.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd18["fc.weight"].T)
    np.testing.assert_array_equal(
        v["params"]["layer3"]["0"]["downsample"]["1"]["scale"], sd18["layer3.0.downsample.1.weight"]
    )
    np.testing.assert_array_equal(v["batch_stats"]["bn1"]["var"], sd18["bn1.running_var"])
    np.testing.assert_array_equal(
        v["batch_stats"]["layer4"]["1"]["bn2"]["mean"], sd18["layer4.1.bn2.running_mean"]
    )


def test_port_lists_every_missing_extra_and_misshapen_key_at_once(sd18):
    bad = dict(sd18)
    del bad["layer1.0.bn2.running_var"]
    bad["layer1.0.conv3.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    bad["layer2.1.conv1.weight"] = np.zeros((128, 128, 1, 1), np.float32)
    with pytest.raises(PmlError) as err:
        port_torchvision(bad, "resnet18")
    msg = str(err.value)
    assert "missing keys ['layer1.0.bn2.running_var']" in msg
    assert "unexpected keys ['layer1.0.conv3.weight']" in msg
    assert "layer2.1.conv1.weight: (128, 128, 1, 1)" in msg
    with pytest.raises(PmlError, match="weights do not fit resnet50"):
        port_torchvision(sd18, "resnet50")


def test_fc_is_dropped_for_a_body_and_required_for_a_classifier(sd18):
    body = port_torchvision(sd18, "resnet18", with_fc=False)
    assert "fc" not in body["params"]
    no_fc = {k: v for k, v in sd18.items() if not k.startswith("fc.")}
    assert_tree_equal(port_torchvision(no_fc, "resnet18", with_fc=False), body)
    with pytest.raises(PmlError, match=r"missing keys \['fc.bias', 'fc.weight'\]"):
        port_torchvision(no_fc, "resnet18")
    small_fc = {**no_fc, "fc.weight": np.ones((7, 512), np.float32), "fc.bias": np.ones(7, np.float32)}
    assert port_torchvision(small_fc, "resnet18")["params"]["fc"]["kernel"].shape == (512, 7)


def test_num_batches_tracked_and_dataparallel_prefix_are_accepted(sd18):
    wrapped = {f"module.{k}": v for k, v in sd18.items()}
    wrapped["module.bn1.num_batches_tracked"] = np.array(3)
    assert_tree_equal(port_torchvision(wrapped, "resnet18"), port_torchvision(sd18, "resnet18"))


def test_files_safetensors_npz_and_converter(sd18, st18, tmp_path, capsys):
    from_dict = port_torchvision(sd18, "resnet18", with_fc=False)
    assert_tree_equal(port_torchvision(st18, "resnet18", with_fc=False), from_dict)
    npz = tmp_path / "r18.npz"
    assert weights.main(["convert", str(st18), str(npz)]) == 0
    assert_tree_equal(pretrained_variables("resnet18", npz), from_dict)
    back = tmp_path / "back.safetensors"
    assert weights.main(["convert", str(npz), str(back)]) == 0
    assert load_state_dict(back).keys() == sd18.keys()
    assert weights.main(["convert", str(npz), str(tmp_path / "x.bin")]) == 2
    assert "must end in .safetensors or .npz" in capsys.readouterr().err
    assert weights.main(["nonsense"]) == 2


def test_unreadable_files_raise_pml_error(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PmlError, match="broken.safetensors is unreadable"):
        load_state_dict(bad)
    with pytest.raises(PmlError, match="does not exist"):
        load_state_dict(tmp_path / "nope.npz")
    other = tmp_path / "w.h5"
    other.write_bytes(b"x")
    with pytest.raises(PmlError, match="unknown format '.h5'"):
        load_state_dict(other)
    with pytest.raises(PmlError, match="neither a local weights file nor a known name"):
        fetch("resnet18", "IMAGENET_V1")


def test_named_pth_weights_download_and_port_without_torch(sd18, home, server, monkeypatch):
    base, www, log = server
    writer = importlib.util.module_from_spec(
        spec := importlib.util.spec_from_file_location(
            "tp_writer", __file__.rsplit("/", 1)[0] + "/fixtures/torch_pickle/writer.py"
        )
    )
    spec.loader.exec_module(writer)
    data = writer.write_pth(www / "staging.pth", sd18).read_bytes()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    (www / name).write_bytes(data)
    monkeypatch.setitem(weights.TORCHVISION_URLS, ("resnet18", "IMAGENET1K_V1"), base + name)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails: not needed any more
    assert_tree_equal(
        pretrained_variables("resnet18", "IMAGENET1K_V1"), port_torchvision(sd18, "resnet18", with_fc=False)
    )
    assert log == ["/" + name]


def test_named_weights_download_once_verify_and_port(st18, sd18, home, server, monkeypatch):
    base, www, log = server
    data = st18.read_bytes()
    name = f"resnet18-{hashlib.sha256(data).hexdigest()[:8]}.safetensors"
    (www / name).write_bytes(data)
    monkeypatch.setitem(weights.TORCHVISION_URLS, ("resnet18", "IMAGENET1K_V1"), base + name)
    _, variables = create_model("resnet18", 4, pretrained="IMAGENET1K_V1")
    assert (home / "weights" / name).read_bytes() == data
    assert_tree_equal(
        variables["params"]["body"], port_torchvision(sd18, "resnet18", with_fc=False)["params"]
    )
    assert_tree_equal(
        variables["batch_stats"]["body"], port_torchvision(sd18, "resnet18", with_fc=False)["batch_stats"]
    )
    assert variables["params"]["head"]["linear1"]["kernel"].shape == (512, 4)
    assert fetch("resnet18", "IMAGENET1K_V1") == home / "weights" / name
    assert log == ["/" + name]  # cached: fetched once


def test_sha_prefix_mismatch_is_refused(st18, home, server, monkeypatch):
    base, www, _ = server
    (www / "resnet18-deadbeef.safetensors").write_bytes(st18.read_bytes())
    monkeypatch.setitem(
        weights.TORCHVISION_URLS, ("resnet18", "IMAGENET1K_V1"), base + "resnet18-deadbeef.safetensors"
    )
    with pytest.raises(PmlError, match="corrupt"):
        fetch("resnet18", "IMAGENET1K_V1", progress=False)
    assert not any((home / "weights").iterdir())


def test_offline_named_weights_tell_the_user_to_pass_a_local_path(home, monkeypatch):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setitem(
        weights.TORCHVISION_URLS,
        ("resnet50", "IMAGENET1K_V2"),
        f"http://127.0.0.1:{port}/resnet50-11ad3fa6.safetensors",
    )
    with pytest.raises(PmlError, match="pass its local path as pretrained="):
        fetch("resnet50", "IMAGENET1K_V2", progress=False)
    with pytest.raises(
        PmlError, match=r"no IMAGENET1K_V2 weights for 'resnet18'; available: \['IMAGENET1K_V1'\]"
    ):
        fetch("resnet18", "IMAGENET1K_V2")


def test_timm_names_offline_and_mismatched():
    with pytest.raises(PmlError, match="Hugging Face hub.*pass its local path"):
        fetch("resnet50", "timm/resnet50.a1_in1k")  # HF_HUB_OFFLINE=1 in conftest
    with pytest.raises(PmlError, match="'resnet50d' checkpoint, not 'resnet50'"):
        fetch("resnet50", "timm/resnet50d.ra2_in1k")


def test_url_table_covers_every_torchvision_checkpoint():
    assert len(weights.TORCHVISION_URLS) == 8
    for (arch, name), url in weights.TORCHVISION_URLS.items():
        assert url.startswith(f"https://download.pytorch.org/models/{arch}-") and url.endswith(".pth")
    assert {a for a, n in weights.TORCHVISION_URLS if n == "IMAGENET1K_V2"} == {
        "resnet50",
        "resnet101",
        "resnet152",
    }
