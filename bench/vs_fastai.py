"""pml_jax vs real fastai, end to end: fastbook ch. 6's recipe from the same weights on the same data.

    pip install -e ".[fastai]"          # torch, torchvision and fastai: never a pml_jax dependency
    python bench/vs_fastai.py --arch resnet18
    python bench/vs_fastai.py --arch resnet50
    python bench/vs_fastai.py --arch resnet18 --size 64 --train_images 64 --valid_images 32 \\
        --batch_size 16 --epochs 1 --freeze_epochs 1 --pretrain_images 80 --pretrain_epochs 1   # a smoke test

Offline stand-ins for PASCAL 2007 and the ImageNet weights: two sets from pml_jax's synthetic
generator (pml_jax.data.synthetic, cached under OUT/cache/data): one to pretrain, another (other
seed) to fine-tune. The pretraining is a brief from-scratch PyTorch training of the torchvision
`--arch` at `--pretrain_size` px, saved as a torchvision-format state_dict .pth (cached under
OUT/cache/weights); its features are real but weak, so the fine-tuned models land clearly above
chance and below perfect and differences show. Then, each in its own process (whole-process wall
time, imports and exit included):

  fastai   bench/vs_fastai_torch.py: DataBlock(ImageBlock, MultiCategoryBlock) from the CSV with its
           is_valid split, item_tfms=RandomResizedCrop(size, min_scale=0.35), vision_learner on the
           torchvision arch whose weights come from the .pth (fastai's resnet model_meta: cut, split,
           imagenet_stats normalisation and freeze as with pretrained=True), metrics
           accuracy_multi(thresh=0.2) and APScoreMulti, fine_tune(3, base_lr=3e-3, freeze_epochs=4),
           then the seed's 29-point threshold sweep on learn.get_preds()
  pml_jax  python run.py --preset fastbook --source csv --csv ... --data_path ... --pretrained that.pth
           --arch ... with an empty JAX compile cache (PML_JAX_CACHE_XLA, one folder per seed: cold),
           then the first seed once more on its filled cache (warm)

for each of `--repeats` seeds (the order of the two libraries alternates). It prints, and writes
to OUT/<arch>-<size>px/results.md and results.json, a side-by-side table: per-epoch valid_loss,
accuracy_multi and mAP, the final sweep, whole-process wall times and where each process's time
went (each process's main-thread timeline: input wait and step time from metrics.jsonl,
checkpoints and outputs from the timestamps of the run's output lines; pml_jax's compile seconds
from JAX_LOG_COMPILES=1, apart, as they overlap), each library's seed spread next to the gap
between them.

Duration on this project's 2-core VM, nothing else running: resnet18 --repeats 4 (4 fastai + 4 cold
+ 1 warm pml_jax runs) 11.5 minutes on 2026-12-07, 12.8-14.3 on 2026-12-08, plus 2.5 for its
pretraining when not cached; resnet50 with 2 seeds, its pretraining included, 17.5 minutes (225 s of
pretraining) on 2026-12-07, 21 minutes (293 s) on 2026-12-08. The script prints an estimate for the
flags given before it starts. Run it alone on the machine: other jobs on the 2 cores
change every wall time.

Difficulty (2026-12-03, zero_init_residual pretraining): on its own set at 64 px the resnet18
pretraining reaches valid mAP 0.70 (0.90 without zero_init_residual), the resnet50 one 0.58 (0.35
without). Fine-tuned at 128 px, resnet18 ends near mAP 0.52, accuracy_multi@0.2 about 0.40 and a best
sweep accuracy near 0.79 (all-negative: 0.78), resnet50 near mAP 0.50 and accuracy_multi 0.37: above
chance in ranking, far from perfect.
--pretrain_size 128 and more pretraining epochs should transfer better, at several times the
pretraining time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # pml_jax from this checkout; vs_fastai_report

from vs_fastai_report import fastai_breakdown, markdown, pml_breakdown  # noqa: E402

from pml_jax.choices import ARCHS  # noqa: E402
from pml_jax.config import PRESETS  # noqa: E402

RECIPE = PRESETS["fastbook"]  # size, batch, min_scale, epochs, freeze_epochs, base_lr, thresh: one source
EXTRA = ("torch", "torchvision", "fastai")  # the modules of pyproject's `fastai` extra
PRETRAIN_SEED, FINETUNE_SEED = 1, 2  # generator seeds of the two sets
PRETRAIN = PRESETS["demo"]  # the from-scratch recipe: its one-cycle lr peak (AdamW here), milder crops, flips
# For the duration estimate only, measured by this script on this project's 2-core VM (2026-12-03,
# batch 64, 128 px, the mean of fastai and pml_jax): images/s of the unfrozen and frozen train steps
# and of validation (pml_jax's checkpoints included), the PyTorch pretraining's images/s at 64 px,
# the extra seconds of a cold pml_jax run over a warm one (compiling), and the fixed seconds of a
# process (imports, data, model, final report, exit).
RATES = {"resnet18": {"train": 29.0, "frozen": 48.0, "eval": 90.0, "pretrain64": 113.0},
         "resnet50": {"train": 11.0, "frozen": 17.0, "eval": 38.0, "pretrain64": 49.0}}
COLD_COMPILE_S = {"resnet18": 10.0, "resnet50": 24.0}
PROCESS_S = 20.0
SAME = ["the pretrained weights (one .pth file)", "the images, labels, vocab and train/valid split (one CSV)",
        "the recipe: arch, fastai head, size, batch size, RandomResizedCrop min_scale, fine_tune schedule "
        "(lrs, moms, freeze), Adam and weight decay, BCE loss, the metrics and the sweep"]
DIFFER = ["the random crops, the shuffling and the head's initial values (torch's RNG vs pml_jax's seeded "
          "streams)", "the dropout masks", "float rounding (oneDNN vs XLA:CPU kernels)",
          "pml_jax also writes checkpoints (each phase's end, and every 5 minutes: `--checkpoint_minutes`), plots, "
          "tables and the final model; the fastai side "
          "only trains, as the chapter does"]


class BenchError(Exception):
    """A problem the user can fix (missing extra, a failed run): printed as one `error:` line, exit 2."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet18", choices=tuple(ARCHS))
    ap.add_argument("--size", type=int, default=RECIPE.size, help="fine-tuning image side in px")
    ap.add_argument("--epochs", type=int, default=RECIPE.epochs, help="fine_tune's unfrozen epochs")
    ap.add_argument("--freeze_epochs", type=int, default=RECIPE.freeze_epochs)
    ap.add_argument("--batch_size", type=int, default=RECIPE.batch_size)
    ap.add_argument("--repeats", type=int, default=2, help="seeds 0..N-1 of each library")
    ap.add_argument("--seeds", help="comma-separated seeds (instead of --repeats)")
    ap.add_argument("--train_images", type=int, default=256, help="fine-tuning set: training images")
    ap.add_argument("--valid_images", type=int, default=192, help="fine-tuning set: validation images")
    ap.add_argument("--pretrain_images", type=int, default=1600, help="pretraining set (80%% of it trains)")
    ap.add_argument("--pretrain_epochs", type=int, default=10)
    ap.add_argument("--pretrain_size", type=int, default=64, help="pretraining image side in px")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "vs_fastai",
                    help="results, runs and (under cache/) the generated sets and weights")
    args = ap.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(args.repeats))
    if not args.seeds:
        ap.error("need at least one seed")
    if args.train_images < args.batch_size or args.valid_images < 1:
        ap.error(f"need train_images >= batch_size ({args.batch_size}) and valid_images >= 1")
    return args


def check_extra() -> None:
    """BenchError naming the extra when torch, torchvision or fastai cannot be imported."""
    missing = []
    for name in EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise BenchError(f"bench/vs_fastai.py needs {', '.join(missing)}, which pml_jax does not: "
                         "pip install -e '.[fastai]'")


def estimate_seconds(args) -> float | None:
    """Rough duration of the whole measurement (pretraining included) from RATES; None for other archs."""
    if args.arch not in RATES:
        return None
    rate = {k: v * (128 / args.size) ** 2 for k, v in RATES[args.arch].items()}
    run = (args.freeze_epochs * args.train_images / rate["frozen"] + args.epochs * args.train_images / rate["train"]
           + (args.freeze_epochs + args.epochs) * args.valid_images / rate["eval"] + PROCESS_S)
    pretrain_rate = RATES[args.arch]["pretrain64"] * (64 / args.pretrain_size) ** 2
    pretrain = 0.8 * args.pretrain_images * args.pretrain_epochs / pretrain_rate
    n = len(args.seeds)
    return pretrain + (2 * n + 1) * run + n * COLD_COMPILE_S[args.arch]


# ----------------------------------------------------------------------------------------- data, weights
def generated_set(cache: Path, tag: str, n_train: int, n_valid: int, seed: int) -> dict:
    """pml_jax's synthetic set with exactly n_train/n_valid images: {'csv', 'images', 'key'}."""
    from pml_jax.data.synthetic import SyntheticParams, synthetic

    n = n_train + n_valid
    params = {"n_images": n, "seed": seed, "valid_pct": (n_valid + 0.5) / n}  # int(valid_pct * n) == n_valid
    key = SyntheticParams(**params).key()
    root = cache / "data" / f"{tag}-{key}"
    synthetic(root, **params)
    return {"csv": str(root / "train.csv"), "images": str(root / "train"), "key": key}


def pretrained_file(args, cache: Path, data: dict) -> tuple[Path, dict]:
    """The cached .pth of the brief PyTorch pretraining on `data` (trained now if missing) and its stats."""
    import torch

    job = {"csv": data["csv"], "images": data["images"], "arch": args.arch, "size": args.pretrain_size,
           "epochs": args.pretrain_epochs, "seed": 0, "batch_size": PRETRAIN.batch_size, "lr": PRETRAIN.base_lr,
           "min_scale": PRETRAIN.min_scale,
           "zero_init_residual": True}  # blocks start as the identity: resnet50's own-set mAP 0.35 -> 0.58
    key = hashlib.sha256(json.dumps({**job, "data": data["key"], "torch": torch.__version__},
                                    sort_keys=True).encode()).hexdigest()[:12]
    pth = cache / "weights" / f"{args.arch}-{key}.pth"
    stats = pth.with_suffix(".json")
    if pth.is_file() and stats.is_file():
        print(f"pretrained weights: {pth} (cached)")
        return pth, json.loads(stats.read_text())
    pth.parent.mkdir(parents=True, exist_ok=True)
    print(f"pretraining {args.arch} from scratch with PyTorch: {args.pretrain_epochs} epochs at "
          f"{args.pretrain_size} px on {data['images']} ...", flush=True)
    job_file = pth.with_suffix(".job.json")
    job_file.write_text(json.dumps({**job, "pth": str(pth), "result": str(stats)}))
    timed_process("pretraining", [sys.executable, str(HERE / "vs_fastai_torch.py"), "pretrain", str(job_file)], {},
                  pth.with_suffix(".log"))
    result = json.loads(stats.read_text())
    print(f"pretrained weights: {pth} (valid mAP {result['valid_mAP']:.3f} on its own set, "
          f"{result['train_seconds']:.0f} s)")
    return pth, result


# ----------------------------------------------------------------------------------------- processes
def timed_process(name: str, cmd: list[str], env: dict, log_path: Path) -> dict:
    """Run `cmd` (called `name` in errors) from the repository root; {'start', 'end', 'wall', 'lines': [(time, text)]} (time.time()).

    stdout and stderr are merged, unbuffered, timestamped as they arrive and written to `log_path`.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    lines = []
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for text in proc.stdout:
            now = time.time()
            lines.append((now, text.rstrip("\n")))
            log.write(f"{now - start:9.3f} {text}")
        code = proc.wait()
    end = time.time()
    if code != 0:
        tail = "; ".join(t for _, t in lines[-3:])
        raise BenchError(f"the {name} process exited with status {code} ({tail}); "
                         f"whole output in {log_path}")
    return {"start": start, "end": end, "wall": end - start, "lines": lines}


def warm_file_cache() -> None:
    """Import both libraries once, untimed, so the first timed process does not pay for a cold disk cache."""
    for module in ("fastai.vision.all", "pml_jax.workflow"):
        subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True, capture_output=True)


def recipe_job(args, data: dict, pth: Path, seed: int) -> dict:
    return {"csv": data["csv"], "images": data["images"], "pth": str(pth), "arch": args.arch, "size": args.size,
            "batch_size": args.batch_size, "min_scale": RECIPE.min_scale, "epochs": args.epochs,
            "freeze_epochs": args.freeze_epochs, "base_lr": RECIPE.base_lr, "thresh": RECIPE.thresh, "seed": seed}


def fastai_run(args, data: dict, pth: Path, seed: int, folder: Path) -> dict:
    """One fastai fine-tuning process; its rows, sweep, wall time and breakdown."""
    folder.mkdir(parents=True, exist_ok=True)
    job = folder / "job.json"
    job.write_text(json.dumps({**recipe_job(args, data, pth, seed), "result": str(folder / "result.json")}))
    proc = timed_process("fastai", [sys.executable, str(HERE / "vs_fastai_torch.py"), "fastai", str(job)], {},
                         folder / "output.log")
    result = json.loads((folder / "result.json").read_text())
    return {"lib": "fastai", "label": f"fastai seed {seed}", "seed": seed, "wall": proc["wall"],
            "rows": result["rows"], "best_thresh": result["best_thresh"], "best_accuracy": result["best_accuracy"],
            "breakdown": fastai_breakdown(result, proc["start"], proc["end"]),
            "torch_threads": result["torch_threads"], "num_workers": result["num_workers"]}


def pml_run(args, data: dict, pth: Path, seed: int, folder: Path, xla_cache: Path, warm: bool) -> dict:
    """One `python run.py --preset fastbook` process on the CSV; its rows, sweep, wall time and breakdown."""
    shutil.rmtree(folder, ignore_errors=True)  # this script's own run folder: a fresh workdir every time
    folder.mkdir(parents=True)
    workdir = folder / "run"
    job = recipe_job(args, data, pth, seed)
    cmd = [sys.executable, str(ROOT / "run.py"), "--preset", "fastbook", "--source", "csv",
           "--csv", job["csv"], "--data_path", job["images"], "--pretrained", job["pth"], "--arch", args.arch,
           "--size", str(args.size), "--batch_size", str(args.batch_size), "--epochs", str(args.epochs),
           "--freeze_epochs", str(args.freeze_epochs), "--seed", str(seed), "--workdir", str(workdir)]
    proc = timed_process("pml_jax run.py", cmd, {"PML_JAX_CACHE_XLA": str(xla_cache), "JAX_LOG_COMPILES": "1"},
                         folder / "output.log")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((workdir / "summary.json").read_text())
    train_images = args.train_images // args.batch_size * args.batch_size  # the last partial batch is dropped
    for heavy in ("checkpoints", "model"):  # hundreds of MB per run; metrics and summary are kept
        shutil.rmtree(workdir / heavy, ignore_errors=True)
    label = f"pml_jax seed {seed}" + (" warm" if warm else " cold")
    return {"lib": "pml_jax", "label": label, "seed": seed, "warm": warm, "wall": proc["wall"], "rows": rows,
            "best_thresh": summary["best_thresh"], "best_accuracy": summary["best_accuracy"],
            "breakdown": pml_breakdown(proc["lines"], rows, proc["start"], proc["end"], train_images)}


def measure(args) -> dict:
    """Everything: the sets, the weights, every run, the report (also written under OUT)."""
    cache = args.out / "cache"
    here = args.out / f"{args.arch}-{args.size}px"
    here.mkdir(parents=True, exist_ok=True)
    estimate = estimate_seconds(args)
    if estimate is not None:
        print(f"estimated duration on a quiet 2-core VM: about {estimate / 60:.0f} min", flush=True)
    n_pre = args.pretrain_images
    pre = generated_set(cache, "pretrain", n_pre - int(0.2 * n_pre), int(0.2 * n_pre), PRETRAIN_SEED)
    fine = generated_set(cache, "finetune", args.train_images, args.valid_images, FINETUNE_SEED)
    pth, pretrain_stats = pretrained_file(args, cache, pre)
    warm_file_cache()
    runs = []
    for i, seed in enumerate(args.seeds):
        order = ["fastai", "pml_jax"] if i % 2 == 0 else ["pml_jax", "fastai"]
        for lib in order:
            print(f"{lib} seed {seed} ...", flush=True)
            if lib == "fastai":
                run = fastai_run(args, fine, pth, seed, here / f"fastai-s{seed}")
            else:
                xla = here / f"xla-s{seed}"
                shutil.rmtree(xla, ignore_errors=True)  # cold: an empty compile cache
                run = pml_run(args, fine, pth, seed, here / f"pml_jax-s{seed}-cold", xla, warm=False)
            print(f"  {run['label']}: {run['wall']:.0f} s, mAP {run['rows'][-1]['mAP']:.4f}", flush=True)
            runs.append(run)
    first = args.seeds[0]
    print(f"pml_jax seed {first}, warm compile cache ...", flush=True)
    runs.append(pml_run(args, fine, pth, first, here / f"pml_jax-s{first}-warm", here / f"xla-s{first}", warm=True))
    runs.sort(key=lambda r: (r["lib"], r.get("warm", False), r["seed"]))
    setup = [f"`{shlex.join(['python', 'bench/vs_fastai.py', *sys.argv[1:]])}`",
             f"{args.arch}, {args.size} px, batch {args.batch_size}, fine_tune({args.epochs}, "
             f"base_lr={RECIPE.base_lr:g}, freeze_epochs={args.freeze_epochs}), accuracy_multi at thresh "
             f"{RECIPE.thresh:g}",
             f"fine-tuning set: {args.train_images} train / {args.valid_images} valid generated images "
             f"(pml_jax.data.synthetic seed {FINETUNE_SEED}, 8 shape classes), {fine['csv']}",
             f"pretrained weights: {args.arch} trained from scratch by PyTorch for {args.pretrain_epochs} epochs at "
             f"{args.pretrain_size} px on another generated set ({n_pre} images, seed {PRETRAIN_SEED}; valid mAP "
             f"{pretrain_stats['valid_mAP']:.3f} there), {pth}",
             f"machine: {os.cpu_count()} CPUs, load average at the end {os.getloadavg()[0]:.2f}; fastai: torch "
             f"{_version('torch')} ({runs[0].get('torch_threads')} threads, {runs[0].get('num_workers')} "
             f"DataLoader workers), fastai {_version('fastai')}; pml_jax on jax {_version('jax')}"]
    title = f"Side by side with fastai: {args.arch}, {args.size} px"
    report = markdown(title, runs, setup, SAME, DIFFER, frozen_phases=args.freeze_epochs > 0)
    (here / "results.md").write_text(report)
    (here / "results.json").write_text(json.dumps({"setup": setup, "runs": runs, "pretrain": pretrain_stats},
                                                  indent=1) + "\n")
    print(report)
    print(f"wrote {here / 'results.md'} and {here / 'results.json'}")
    return {"runs": runs}


def _version(name: str) -> str:
    return importlib.import_module(name).__version__


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_extra()
        measure(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
