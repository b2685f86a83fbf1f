"""Pretrained ResNet weights: torchvision/timm state_dicts -> Flax variables (no torch at run time).

Sources: a dict of numpy arrays keyed like torchvision's state_dict, or a `.safetensors`, `.npz`
or `.pth/.pt/.bin` file (`.pth` read by `torch_pickle`, without torch). Named checkpoints:
torchvision 'IMAGENET1K_V1'/'IMAGENET1K_V2' (downloaded into `cache_dir('weights')`, sha256-prefix
checked) and 'timm/<arch>.<tag>' from the Hugging Face hub.
Converter: `python -m pml_jax.models.weights convert in.pth out.safetensors`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from pml_jax.download import download
from pml_jax.errors import PmlError
from pml_jax.hosts import process_0_first
from pml_jax.models import torch_pickle
from pml_jax.models.resnet import resnet
from pml_jax.paths import cache_dir

_BASE = "https://download.pytorch.org/models/"
TORCHVISION_URLS: dict[tuple[str, str], str] = {
    ("resnet18", "IMAGENET1K_V1"): _BASE + "resnet18-f37072fd.pth",
    ("resnet34", "IMAGENET1K_V1"): _BASE + "resnet34-b627a593.pth",
    ("resnet50", "IMAGENET1K_V1"): _BASE + "resnet50-0676ba61.pth",
    ("resnet50", "IMAGENET1K_V2"): _BASE + "resnet50-11ad3fa6.pth",
    ("resnet101", "IMAGENET1K_V1"): _BASE + "resnet101-63fe2227.pth",
    ("resnet101", "IMAGENET1K_V2"): _BASE + "resnet101-cd907fc2.pth",
    ("resnet152", "IMAGENET1K_V1"): _BASE + "resnet152-394f9c45.pth",
    ("resnet152", "IMAGENET1K_V2"): _BASE + "resnet152-f82ba261.pth",
}
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
IGNORED_SUFFIX = ".num_batches_tracked"


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a state_dict from `.safetensors`, `.npz` or `.pth/.pt/.bin` (torch-free) -> {key: array}."""
    path = Path(path)
    if not path.is_file():
        raise PmlError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    except Exception as e:  # corrupt or truncated file
        raise PmlError(f"weights file {path} is unreadable: {e}") from None
    if suffix in TORCH_SUFFIXES:
        return _load_torch(path)
    raise PmlError(f"weights file {path}: unknown format {suffix!r}; use .safetensors, .npz or .pth")


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    """A `torch.save` file -> its state_dict's arrays (of a checkpoint's 'state_dict'/'model' entry)."""
    sd = torch_pickle.load(path)
    for nested in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(nested), dict):
            sd = sd[nested]
    if not isinstance(sd, dict):
        raise PmlError(f"weights file {path} holds a {type(sd).__name__}, not a state_dict")
    return {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}


def _torch_key(col: str, path: tuple[str, ...]) -> tuple[str, str]:
    """Flax leaf -> (torchvision key, layout) with layout in {'conv', 'linear', 'vector'}."""
    *mods, leaf = path
    prefix = ".".join(mods)
    if col == "batch_stats":
        return f"{prefix}.running_{leaf}", "vector"
    if leaf == "kernel":
        return f"{prefix}.weight", "linear" if mods[-1] == "fc" else "conv"
    return f"{prefix}.{'weight' if leaf == 'scale' else 'bias'}", "vector"


def _to_flax(array: np.ndarray, layout: str) -> np.ndarray:
    array = np.asarray(array, np.float32)
    if layout == "conv" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if layout == "linear" and array.ndim == 2:
        return array.T  # (out, in) -> (in, out)
    return array


def port_torchvision(source: Mapping[str, np.ndarray] | str | Path, arch: str, with_fc: bool = True) -> dict:
    """torchvision/timm ResNet state_dict (dict or file) -> {'params', 'batch_stats'} for `resnet(arch)`.

    with_fc=True: the classifier (`fc` size taken from the source, default 1000); with_fc=False:
    the body, and any `fc.*` keys are dropped. Every key must be consumed and every leaf filled
    with the right shape (`num_batches_tracked` ignored); otherwise one PmlError lists all problems.
    """
    sd = dict(source) if isinstance(source, Mapping) else load_state_dict(source)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    num_classes = None
    if with_fc:
        num_classes = int(np.shape(sd["fc.weight"])[0]) if "fc.weight" in sd else 1000
    module = resnet(arch, num_classes=num_classes)
    template = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    unused = {k for k in sd if not k.endswith(IGNORED_SUFFIX)}
    if not with_fc:
        unused = {k for k in unused if not k.startswith("fc.")}
    missing, wrong, out = [], [], {}
    for col in ("params", "batch_stats"):
        flat = {}
        for path, leaf in traverse_util.flatten_dict(template[col]).items():
            key, layout = _torch_key(col, path)
            unused.discard(key)
            if key not in sd:
                missing.append(key)
                continue
            value = _to_flax(sd[key], layout)
            if value.shape != leaf.shape:
                wrong.append(f"{key}: {tuple(np.shape(sd[key]))} (expected {leaf.shape} in Flax layout)")
                continue
            flat[path] = jnp.asarray(value)
        out[col] = traverse_util.unflatten_dict(flat)
    if missing or wrong or unused:
        problems = [f"missing keys {missing}"] if missing else []
        problems += [f"unexpected keys {sorted(unused)}"] if unused else []
        problems += [f"wrong shapes {wrong}"] if wrong else []
        raise PmlError(f"weights do not fit {arch}: " + "; ".join(problems))
    return out


def fetch(arch: str, pretrained: str | Path, progress: bool = True) -> Path:
    """Local file holding the `pretrained` weights for `arch`, downloading a named one once (in a
    multi-process run process 0 first, so hosts sharing the cache folder do not write it at once)."""
    name = str(pretrained)
    if name.startswith("timm/"):
        return process_0_first(f"fetch {name}", lambda: _fetch_timm(arch, name))
    if name.upper().startswith("IMAGENET1K_"):
        return process_0_first(f"fetch {arch} {name.upper()}", lambda: _fetch_torchvision(arch, name.upper(), progress))
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise PmlError(
            f"pretrained={name!r} is neither a local weights file nor a known name "
            "('IMAGENET1K_V1', 'IMAGENET1K_V2', 'timm/<arch>.<tag>')"
        )
    return path


def _fetch_torchvision(arch: str, name: str, progress: bool) -> Path:
    url = TORCHVISION_URLS.get((arch, name))
    if url is None:
        have = sorted(w for a, w in TORCHVISION_URLS if a == arch)
        raise PmlError(f"torchvision has no {name} weights for {arch!r}; available: {have}")
    filename = url.rsplit("/", 1)[-1]
    digest = re.search(r"-([0-9a-f]{6,})\.[a-z]+$", filename)
    dest = cache_dir("weights") / filename
    try:
        return download(url, dest, sha256=digest.group(1) if digest else None, progress=progress)
    except PmlError as e:
        raise PmlError(
            f"{e}. Without network, download {url} elsewhere and pass its local path as pretrained="
        ) from None


def _fetch_timm(arch: str, repo_id: str) -> Path:
    model = repo_id.split("/", 1)[1].split(".", 1)[0]
    if model != arch:
        raise PmlError(f"pretrained={repo_id!r} is a {model!r} checkpoint, not {arch!r}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "model.safetensors"))
    except Exception as e:  # offline, unknown repo, HTTP errors
        raise PmlError(
            f"could not get {repo_id}/model.safetensors from the Hugging Face hub ({type(e).__name__}: "
            f"{e}); download it elsewhere and pass its local path as pretrained="
        ) from None


def pretrained_variables(arch: str, pretrained: str | Path, with_fc: bool = False) -> dict:
    """Resolve `pretrained` (name or path) and port it: {'params', 'batch_stats'} for `arch`."""
    return port_torchvision(fetch(arch, pretrained), arch, with_fc=with_fc)


def convert(src: str | Path, dst: str | Path) -> Path:
    """Re-save a state_dict file (any format `load_state_dict` reads) as `.safetensors` or `.npz`."""
    sd = {k: np.asarray(v, order="C") for k, v in load_state_dict(src).items()}
    dst = Path(dst)
    if dst.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file(sd, str(dst))
    elif dst.suffix == ".npz":
        np.savez(dst, **sd)
    else:
        raise PmlError(f"convert: output {dst} must end in .safetensors or .npz")
    return dst


def main(argv: list[str] | None = None) -> int:
    """CLI: `convert IN OUT`; bad input gets one `error:` line and status 2."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] != "convert":
        print("usage: python -m pml_jax.models.weights convert in.pth out.safetensors", file=sys.stderr)
        return 2
    try:
        print(convert(argv[1], argv[2]))
    except PmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
