"""One prepared device check: what pml_jax does on this machine's accelerator, in one command.

    python bench/device_check.py [--out device_check] [--archs resnet18,resnet50] [--dtypes float32,bfloat16]
                                 [--quick | --full] [--budget 420]

Runs from a checkout (pml_jax need not be pip-installed) without TensorFlow; PyTorch is optional
(without it the torch columns read n/a). Sections, in order:
  environment  python and package versions, backend, devices (kind, memory), torch and its CUDA
               device, what 'auto' picks: kernels (pml_jax.models.kernels) and dtype
               (pml_jax.train.precision)
  parity       the committed torchvision fixtures (tests/fixtures/torchvision: synthetic weights,
               inputs, real torchvision logits) through our ported classifier on the device: max
               |ours - torchvision| and that over max |torchvision|; float32 at jax's default
               precision (TF32 convolutions on NVIDIA GPUs) and at 'highest', bfloat16 for information
  transfer     seconds of `jax.device_put` of one uint8 batch (images + targets) to the device
  fine_tune    Learner.fine_tune of resnet18 (random init) on in-memory synthetic batches (coloured
               squares, one colour per class: learnable, so the loss must fall), its per-step losses
               and a loss plot when matplotlib is there
  steps        train / frozen / eval step images/s of each arch and dtype (bench/train_step.py's
               runners, the compile time of each step), interleaved with PyTorch's same step on the
               same device (bench/compare_torch.py: channels_last and cudnn.benchmark on CUDA,
               torch.autocast bfloat16 for the bfloat16 rows), the ratio pml_jax/torch, and the
               transfer's share of a step if it is not overlapped: put / (put + step)
It writes OUT/device_check.json (every figure) and OUT/device_check.md (the tables, also printed),
rewritten after each section, so a run stopped early keeps what it measured.

--quick (the default on the CPU backend; --full overrides): resnet18, 32 px, batch 8, the train
and eval steps timed once, a 16-step fine_tune: the same code paths, sized for CI. Full (the default on GPU / TPU):
resnet18 and resnet50 at 128 px, batch 64, 5 repeats of 10 steps. --budget (seconds, from the
start): a steps block (one arch and dtype) starts only if the last block's time (x2.5 for a new
arch) still fits, so a full run ends inside 8 minutes; skipped blocks are listed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # pml_jax from this checkout; train_step, compare_torch
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory for PyTorch

import jax  # noqa: E402
import numpy as np  # noqa: E402

from train_step import PHASES, jax_runners, random_batch, ratio_text, timed_rows  # noqa: E402

from pml_jax.models import create_model, port_torchvision, resnet, resolve_kernels  # noqa: E402
from pml_jax.train.learner import Learner  # noqa: E402
from pml_jax.train.precision import compute_dtype  # noqa: E402

try:
    import compare_torch as twin  # the PyTorch twin of the model and steps
except ImportError:
    twin = None

# Sizes of each mode; flags override archs, phases, size, batch, steps, repeats and budget.
MODES = {
    "full": dict(archs="resnet18,resnet50", phases=",".join(PHASES), size=128, batch=64, steps=10, repeats=5,
                 budget=420.0,
                 parity_inputs=None, ft=dict(size=64, batch=64, train_batches=16, n_valid=256, epochs=2)),
    "quick": dict(archs="resnet18", phases="train,eval", size=32, batch=8, steps=1, repeats=1, budget=420.0,
                  parity_inputs=1, ft=dict(size=32, batch=8, train_batches=8, n_valid=16, epochs=1)),
}
STEP_DTYPES = "float32,bfloat16"  # the steps' compute dtypes unless --dtypes
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu", "flax", "optax",
            "orbax-checkpoint", "numpy", "matplotlib", "torch", "torchvision", "tensorflow")
PARITY_VARIANTS = (("float32", "default"), ("float32", "highest"), ("bfloat16", "default"))
PARITY_TOL = 1e-4  # the tests' relative tolerance of float32 logits vs torchvision (CPU)
NEW_ARCH_FACTOR = 2.5  # a steps block of a new arch is estimated at this x the last block's time
FT_ARCH, FT_CLASSES, FT_LR = "resnet18", 4, 1e-2
COLOURS = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255], [255, 255, 40]], np.uint8)  # one per class


class Clock:
    """Seconds since the start; `log` prints a progress line stamped with them."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {msg}", flush=True)


# ---------------------------------------------------------------- environment
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory(device) -> dict | None:
    """bytes_limit / bytes_in_use / peak_bytes_in_use of `device`, where its backend reports them."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without allocator stats raise their own errors
        return None
    keys = ("bytes_limit", "bytes_in_use", "peak_bytes_in_use")
    return {k: int(stats[k]) for k in keys if stats and k in stats} or None


def torch_device(backend: str) -> tuple[str | None, str]:
    """(torch device for this jax backend or None, why none)."""
    if twin is None:
        return None, "torch/torchvision not installed"
    if backend == "cpu":
        return "cpu", ""
    if backend == "gpu" and twin.torch.cuda.is_available():
        return "cuda", ""
    return None, f"torch has no device for jax's {backend} backend here"


def environment(mode: str) -> dict:
    """Versions, devices and the 'auto' choices."""
    devices = jax.devices()
    backend = jax.default_backend()
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(), "mode": mode,
        "packages": {name: _version(name) for name in PACKAGES},
        "jax": jax.__version__, "backend": backend, "device_count": len(devices),
        "devices": sorted({f"{d.platform}:{d.device_kind}" for d in devices}),
        "memory": _memory(devices[0]), "cpu_count": os.cpu_count(),
        "auto_kernels": resolve_kernels("auto"), "auto_dtype": compute_dtype("auto").name,
        "torch": None,
    }
    device, why = torch_device(backend)
    if twin is not None:
        torch = twin.torch
        env["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                        "threads": torch.get_num_threads(), "device": device, "why_none": why or None}
    return env


# ---------------------------------------------------------------- parity
def _fixture_rule():
    """tests/fixtures/torchvision/rule.py as a module (weights rule, inputs, fixture loader)."""
    spec = importlib.util.spec_from_file_location("tv_rule", ROOT / "tests/fixtures/torchvision/rule.py")
    rule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rule)
    return rule


def _logits(arch: str, variables, x: np.ndarray, dtype: str, precision: str) -> np.ndarray:
    """Our classifier's eval logits of normalised NHWC `x`, computed on the default device."""
    model = resnet(arch, dtype=compute_dtype(dtype))
    with jax.default_matmul_precision(precision if precision != "default" else None):
        out = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
    return np.asarray(jax.device_get(out), np.float32)


def parity(archs: list[str], n_inputs: int | None, clock: Clock) -> list[dict]:
    """One row per arch, fixture input and (dtype, precision): max_abs, max_rel vs torchvision."""
    rule = _fixture_rule()
    meta, golden = rule.load_fixtures()
    rows = []
    for arch in (a for a in archs if a in meta["arch_seeds"]):
        shapes = meta["state_dict_shapes"][arch]
        variables = port_torchvision(rule.synthetic_state_dict(shapes, meta["arch_seeds"][arch]), arch)
        for tag, (seed, shape) in list(meta["inputs"].items())[:n_inputs]:
            x, ref = rule.images(seed, shape), golden[f"{arch}/{tag}/logits"]
            for dtype, precision in PARITY_VARIANTS:
                diff = float(np.abs(_logits(arch, variables, x, dtype, precision) - ref).max())
                rel = diff / float(np.abs(ref).max())
                rows.append({"arch": arch, "input": tag, "dtype": dtype, "precision": precision,
                             "max_abs": diff, "max_rel": rel, "ref_max_abs": float(np.abs(ref).max()),
                             "within_tol": rel <= PARITY_TOL if dtype == "float32" else None})
                clock.log(f"parity {arch} {tag} {dtype} {precision}: max rel {rel:.2e}")
    return rows


# ---------------------------------------------------------------- transfer
def transfer(batch: dict, repeats: int = 10) -> dict:
    """Median seconds to put `batch` (numpy) on the default device and wait for it."""
    device = jax.devices()[0]

    def put():
        jax.block_until_ready(jax.device_put(batch, device))

    put()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        put()
        times.append(time.perf_counter() - t0)
    nbytes = sum(v.nbytes for v in batch.values())
    put_s = statistics.median(times)
    return {"bytes": nbytes, "put_s": put_s, "gb_s": nbytes / put_s / 1e9}


# ---------------------------------------------------------------- fine_tune
def squares(n: int, size: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n noisy dark images (uint8 [n, size, size, 3]) with a square of class c's colour at a random
    place for each class present (each with probability 0.4), and their multi-hot targets [n, C]."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, size, size, 3), dtype=np.uint8)
    targets = (rng.random((n, n_classes)) < 0.4).astype(np.float32)
    side = max(size // 4, 2)
    for i, c in zip(*np.nonzero(targets)):
        y, x = rng.integers(0, size - side + 1, 2)
        images[i, y:y + side, x:x + side] = COLOURS[c]
    return images, targets


class MemoryLoaders:
    """The Learner's DataLoaders protocol over in-memory arrays: uint8 images [N, H, W, 3], float32
    targets [N, C], bool is_valid [N]. Train batches are reshuffled per epoch (the last partial one
    dropped); eval batches keep every item, the last padded with mask False."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, is_valid: np.ndarray, batch_size: int,
                 seed: int = 0):
        self.images, self.targets, self.is_valid = images, targets, is_valid
        self.batch_size, self.seed = batch_size, seed

    @property
    def steps_per_epoch(self) -> int:
        return int((~self.is_valid).sum()) // self.batch_size

    def _batch(self, idx: np.ndarray) -> dict:
        pad = self.batch_size - idx.size
        mask = np.concatenate([np.ones(idx.size, bool), np.zeros(pad, bool)])
        idx = np.concatenate([idx, np.zeros(pad, idx.dtype)])
        return {"image": self.images[idx], "target": self.targets[idx] * mask[:, None], "mask": mask}

    def train(self, epoch: int, start_step: int = 0):
        order = np.random.default_rng([self.seed, epoch]).permutation(np.flatnonzero(~self.is_valid))
        for s in range(start_step, self.steps_per_epoch):
            yield self._batch(order[s * self.batch_size:(s + 1) * self.batch_size])

    def finish(self, batch: dict) -> dict:
        """The train batch as the step takes it: these batches already are (no device-side crops)."""
        return batch

    def check_fit(self) -> None:
        """What the Learner checks before it trains: a full train batch and a validation item."""
        if self.steps_per_epoch == 0 or not self.is_valid.any():
            raise ValueError(f"need {self.batch_size} train items and one validation item")

    def valid(self):
        idx = np.flatnonzero(self.is_valid)
        for s in range(0, idx.size, self.batch_size):
            yield self._batch(idx[s:s + self.batch_size])


def fine_tune(cfg: dict, out: Path, clock: Clock) -> dict:
    """Learner.fine_tune(cfg['epochs'], freeze_epochs=1) of resnet18 (dtype 'auto') on `squares`."""
    n_train = cfg["train_batches"] * cfg["batch"]
    images, targets = squares(n_train + cfg["n_valid"], cfg["size"], FT_CLASSES, seed=0)
    is_valid = np.arange(len(images)) >= n_train
    dls = MemoryLoaders(images, targets, is_valid, cfg["batch"])
    dtype = compute_dtype("auto")
    model, variables = create_model(FT_ARCH, FT_CLASSES, dtype=dtype, seed=0)
    learn = Learner(model, variables, dls, dtype=dtype, progress=False, log=lambda line: clock.log(f"  {line}"))
    t0 = time.perf_counter()
    history = learn.fine_tune(cfg["epochs"], base_lr=FT_LR, freeze_epochs=1)
    seconds = time.perf_counter() - t0
    losses = learn.step_losses
    k = max(len(losses) // 4, 1)
    result = {"arch": FT_ARCH, "dtype": np.dtype(dtype).name, "size": cfg["size"], "batch": cfg["batch"],
              "n_train": n_train, "n_valid": cfg["n_valid"], "n_classes": FT_CLASSES,
              "freeze_epochs": 1, "epochs": cfg["epochs"], "base_lr": FT_LR, "seconds": seconds,
              "step_losses": losses, "history": history,
              "first_loss": float(np.mean(losses[:k])), "last_loss": float(np.mean(losses[-k:])),
              "plot": _plot_losses(losses, history, out / "fine_tune_loss.png")}
    result["loss_fell"] = result["last_loss"] < 0.8 * result["first_loss"]
    return result


def _plot_losses(losses, history, path: Path) -> str | None:
    """The loss curve PNG (pml_jax.plots.plot_loss) if matplotlib is installed; its file name."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    from pml_jax.plots import plot_loss

    starts = [prev["step"] for prev, row in zip(history, history[1:]) if row["phase"] != prev["phase"]]
    plot_loss(losses, [r["step"] for r in history], [r["valid_loss"] for r in history], path, phase_starts=starts)
    return path.name


# ---------------------------------------------------------------- steps
def steps_block(arch: str, dtype: str, batch: dict, args, device: str | None, put_s: float) -> list[dict]:
    """timed_rows of pml_jax (and torch on `device`, if any) for one arch and dtype."""
    ours = jax_runners(arch, batch, args.phases, dtype=dtype)
    theirs = twin.torch_runners(arch, batch, args.phases, dtype, device) if device else {}
    rows = timed_rows(ours, theirs, args.batch, args.steps, args.repeats)
    del ours, theirs
    if device == "cuda":
        twin.torch.cuda.empty_cache()
    return [{"arch": arch, "dtype": dtype, **r, "transfer_share": put_s / (put_s + r["jax_step_s"])}
            for r in rows]


def run_steps(report: dict, args, clock: Clock, save) -> None:
    """Every (arch, dtype) steps block that fits in the budget, into report['steps']."""
    device, _ = torch_device(jax.default_backend())
    batch = random_batch(args.batch, args.size)
    report["transfer"] = transfer(batch)
    clock.log(f"transfer: {report['transfer']['put_s'] * 1e3:.2f} ms per batch")
    last, last_arch = 0.0, None
    for arch in args.archs:
        for dtype in args.dtypes:
            estimate = last * (NEW_ARCH_FACTOR if arch != last_arch else 1.0)
            if clock.elapsed() + estimate > args.budget:
                report["skipped"].append(f"steps {arch} {dtype}: {clock.elapsed():.0f} s + an estimated "
                                         f"{estimate:.0f} s would pass the {args.budget:.0f} s budget")
                clock.log(report["skipped"][-1])
                continue
            t0 = time.perf_counter()
            clock.log(f"steps {arch} {dtype}: compiling and timing")
            for row in steps_block(arch, dtype, batch, args, device, report["transfer"]["put_s"]):
                report["steps"].append(row)
                clock.log(f"  {arch} {dtype} {row['phase']}: jax {row['jax_img_s']:.1f} img/s "
                          f"(compile {row['compile_s']:.1f} s), torch {_num(row.get('torch_img_s'), '.1f')}")
            last, last_arch = time.perf_counter() - t0, arch
            save()


# ---------------------------------------------------------------- report
def _num(value, spec: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def _md_environment(env: dict) -> list[str]:
    torch = env["torch"] or {}
    lines = [f"# pml_jax device check ({env['mode']})", "",
             f"python {env['python']}, jax {env['jax']} on {env['backend']}: {env['device_count']} x "
             f"{', '.join(env['devices'])}; memory limit {_bytes((env['memory'] or {}).get('bytes_limit'))}; "
             f"auto: kernels {env['auto_kernels']}, dtype {env['auto_dtype']}; "
             f"torch {torch.get('version', 'n/a')} on {torch.get('device') or 'n/a'} "
             f"({torch.get('cuda_device') or torch.get('why_none') or 'cpu'})", ""]
    if env["mode"] == "quick":
        lines += ["Quick mode: CI sizes (one step per timing), a check that every path runs; its speeds are "
                  "not measurements.", ""]
    return lines


def _md_parity(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    return ["## torchvision parity (eval logits of the committed fixtures, on the device)", "",
            "| arch | input | dtype | precision | max abs diff | max rel diff | within 1e-4 |",
            "|---|---|---|---|---|---|---|",
            *(f"| {r['arch']} | {r['input']} | {r['dtype']} | {r['precision']} | {r['max_abs']:.3g} | "
              f"{r['max_rel']:.2e} | {_num(r['within_tol'], '')} |" for r in rows), ""]


def _md_fine_tune(ft: dict | None) -> list[str]:
    if not ft:
        return []
    return ["## fine_tune (synthetic in-memory squares)", "",
            f"{ft['arch']} {ft['dtype']}, {ft['size']} px, batch {ft['batch']}, {ft['n_train']} train / "
            f"{ft['n_valid']} valid, fine_tune({ft['epochs']}, freeze_epochs=1, base_lr={ft['base_lr']}): "
            f"{len(ft['step_losses'])} steps in {ft['seconds']:.1f} s; loss {ft['first_loss']:.3f} -> "
            f"{ft['last_loss']:.3f} (first / last quarter of the steps; fell: {ft['loss_fell']}); "
            f"final accuracy_multi {ft['history'][-1]['accuracy_multi']:.3f}", ""]


def _md_steps(rows: list[dict], transfer: dict | None, settings: dict) -> list[str]:
    if not rows:
        return []
    lines = [f"## steps ({settings['size']} px, batch {settings['batch']}, medians of {settings['repeats']} x "
             f"{settings['steps']} steps)", "",
             f"device_put of one batch ({transfer['bytes']:,} bytes): {transfer['put_s'] * 1e3:.2f} ms "
             f"({transfer['gb_s']:.2f} GB/s)", "",
             "| arch | dtype | phase | compile s | pml_jax img/s | torch img/s | pml_jax/torch (range) | "
             "GFLOP/s | transfer share |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = ratio_text(r["ratio"], r["ratio_lo"], r["ratio_hi"]) if "ratio" in r else "n/a"
        lines.append(f"| {r['arch']} | {r['dtype']} | {r['phase']} | {r['compile_s']:.1f} | {r['jax_img_s']:.1f} | "
                     f"{_num(r.get('torch_img_s'), '.1f')} | {ratio} | {r['jax_gflops']:.0f} | "
                     f"{r['transfer_share']:.1%} |")
    return lines + [""]


def markdown(report: dict) -> str:
    """The report's tables as markdown."""
    lines = [*_md_environment(report["environment"]), *_md_parity(report["parity"]),
             *_md_fine_tune(report["fine_tune"]),
             *_md_steps(report["steps"], report["transfer"], report["settings"]),
             *(f"skipped: {s}" for s in report["skipped"]),
             f"total {report['seconds']:.0f} s" + ("" if report["complete"] else " (incomplete)")]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="device_check", help="folder for device_check.json/.md (default ./device_check)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CI sizes (the default on the CPU backend)")
    size.add_argument("--full", action="store_true", help="full sizes on any backend")
    ap.add_argument("--archs", help="comma-separated, default resnet18,resnet50 (quick: resnet18)")
    ap.add_argument("--dtypes", default=STEP_DTYPES, help=f"compute dtypes of the steps, default {STEP_DTYPES}")
    ap.add_argument("--phases", help=f"steps to time, default {','.join(PHASES)} (quick: train,eval)")
    for name in ("size", "batch", "steps", "repeats"):
        ap.add_argument(f"--{name}", type=int, help="override the mode's value")
    ap.add_argument("--budget", type=float,
                    help="seconds from the start: a steps block starts only if its estimated time still fits")
    args = ap.parse_args(argv)
    args.mode = "quick" if args.quick or (not args.full and jax.default_backend() == "cpu") else "full"
    defaults = MODES[args.mode]
    for name in ("archs", "phases", "size", "batch", "steps", "repeats", "budget"):
        if getattr(args, name) is None:
            setattr(args, name, defaults[name])
    args.archs, args.phases, args.dtypes = args.archs.split(","), args.phases.split(","), args.dtypes.split(",")
    return args, defaults


def main(argv=None) -> None:
    clock = Clock()
    args, mode = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("archs", "phases", "dtypes", "size", "batch", "steps", "repeats",
                                              "budget")}
    report = {"environment": environment(args.mode), "settings": settings, "parity": [], "fine_tune": None,
              "transfer": None, "steps": [], "skipped": [], "seconds": 0.0, "complete": False}
    env = report["environment"]
    clock.log(f"{args.mode} mode: jax {env['jax']} on {env['backend']} ({', '.join(env['devices'])}); "
              f"auto = kernels {env['auto_kernels']}, dtype {env['auto_dtype']}; "
              f"torch {(env['torch'] or {}).get('device') or 'n/a'}")

    def save():
        report["seconds"] = clock.elapsed()
        (out / "device_check.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
        (out / "device_check.md").write_text(markdown(report))

    report["parity"] = parity(args.archs, mode["parity_inputs"], clock)
    save()
    report["fine_tune"] = fine_tune(mode["ft"], out, clock)
    save()
    run_steps(report, args, clock, save)
    report["environment"]["memory_end"] = _memory(jax.devices()[0])
    report["complete"] = True
    save()
    print(markdown(report), flush=True)
    clock.log(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'}")


if __name__ == "__main__":
    main()
