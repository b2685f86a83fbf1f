"""pml_jax vs PyTorch (fastai's engine) on this machine: the same steps, interleaved in one run.

    pip install -e ".[bench]"
    python bench/compare_torch.py [--archs resnet18,resnet50] [--size 128] [--batch 32] [--repeats 5] [--steps 2]
                                  [--dtypes float32,bfloat16]

Both sides: torchvision `arch` body (random init) + fastai's head (concat pool, BN1d, Dropout 0.25,
Linear(2nf, 512, no bias), ReLU, BN1d, Dropout 0.5, Linear(512, 20, no bias)), float32 params,
uint8 NHWC images normalised inside the step, mean BCE-with-logits. Compute dtype (--dtypes, names
of `pml_jax.train.precision.DTYPES`): float32, or bfloat16 = ours with bf16 activations and
conv/matmul inputs, torch under `torch.autocast(device, dtype=torch.bfloat16)` (fastai's mixed
precision), both with float32 params, optimizer state and loss. Phases:
  train   fwd + bwd + optimizer step over all params (ours: the fastai Adam of pml_jax; torch:
          torch.optim.AdamW(betas=(0.9, 0.99), eps=1e-5, wd 0.01, none on BN/bias), fastai's maths)
  frozen  fastai `freeze`: body params without grad except its BatchNorms (torch: requires_grad False)
  eval    running BN stats, no grad (torch: model.eval() + torch.inference_mode())
Each repeat times --steps steps of torch then pml_jax (the order flips every repeat); the figures
are medians over repeats: images/s of each, the ratio jax/torch (median and range of the per-repeat
ratios: each pair ran back to back) and achieved GFLOP/s from XLA's cost analysis of our compiled
step (the same FLOPs for torch). Load average printed per row.
"""

from __future__ import annotations

import argparse
import os
import sys

try:
    import torch
    import torchvision
except ImportError:
    if __name__ != "__main__":
        raise  # an importer (bench/device_check.py) runs without the torch columns
    print("bench/compare_torch.py needs PyTorch and torchvision, which pml_jax does not: "
          "pip install -e '.[bench]'", file=sys.stderr)
    sys.exit(2)

from train_step import PHASES, jax_runners, load, random_batch, ratio_text, timed_rows  # noqa: E402

from pml_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from pml_jax.train.precision import compute_dtype  # noqa: E402


class ConcatPool(torch.nn.Module):
    """fastai AdaptiveConcatPool2d(1) + Flatten: [B, C, H, W] -> [B, 2C] as [max, avg]."""

    def forward(self, x):
        return torch.cat([x.amax((2, 3)), x.mean((2, 3))], 1)


def torch_model(arch: str, n_out: int) -> torch.nn.Module:
    """torchvision body + fastai `create_head(nf, n_out)`, random init."""
    net = getattr(torchvision.models, arch)(weights=None)
    nf = net.fc.in_features
    body = torch.nn.Sequential(*list(net.children())[:-2])
    head = torch.nn.Sequential(
        ConcatPool(), torch.nn.BatchNorm1d(2 * nf), torch.nn.Dropout(0.25),
        torch.nn.Linear(2 * nf, 512, bias=False), torch.nn.ReLU(inplace=True),
        torch.nn.BatchNorm1d(512), torch.nn.Dropout(0.5), torch.nn.Linear(512, n_out, bias=False))
    return torch.nn.Sequential(body, head)


def torch_runners(arch: str, batch: dict, phases=PHASES, dtype: str = "float32", device: str = "cpu") -> dict:
    """`run()` closures for torch's train / frozen / eval steps on `batch` (uint8 NHWC images, put
    on `device` once), computing in `dtype` ('float32', or 'bfloat16' under autocast). On CUDA the
    model is channels_last, cudnn.benchmark is on and each run() ends with a synchronize."""
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    images = torch.from_numpy(batch["image"]).to(dev).permute(0, 3, 1, 2)  # NCHW view, channels_last strides
    target = torch.from_numpy(batch["target"]).to(dev)
    mean = torch.from_numpy(IMAGENET_MEAN).view(1, 3, 1, 1).to(dev)
    std = torch.from_numpy(IMAGENET_STD).view(1, 3, 1, 1).to(dev)

    def forward(model):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            return model((images.float() / 255.0 - mean) / std)

    def done():
        if cuda:
            torch.cuda.synchronize(dev)

    runners = {}
    for phase in phases:
        model = torch_model(arch, target.shape[1]).to(dev)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        if phase == "eval":
            model.eval()

            def run(model=model):
                with torch.inference_mode():
                    torch.sigmoid(forward(model).float())
                done()
        else:
            model.train()
            body = model[0]
            is_bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                     for p in m.parameters()}
            if phase == "frozen":
                for p in body.parameters():
                    p.requires_grad_(id(p) in is_bn)
            params = [p for p in model.parameters() if p.requires_grad]
            decay = [p for p in params if id(p) not in is_bn and p.ndim > 1]
            no_decay = [p for p in params if id(p) in is_bn or p.ndim <= 1]
            opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                                     {"params": no_decay, "weight_decay": 0.0}],
                                    lr=1e-4, betas=(0.9, 0.99), eps=1e-5)

            def run(model=model, opt=opt):
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(model).float(), target)
                loss.backward()
                opt.step()
                done()
        runners[phase] = run
    return runners


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="resnet18,resnet50")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timing")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--dtypes", default="float32", help="compute dtypes, e.g. float32,bfloat16")
    args = ap.parse_args()
    import jax

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    batch = random_batch(args.batch, args.size)
    phases = args.phases.split(",")
    dtypes = [compute_dtype(d).name for d in args.dtypes.split(",")]
    print(f"{args.size} px, batch {args.batch}; medians of {args.repeats} interleaved timings of "
          f"{args.steps} steps")
    print(f"{'arch':9} {'phase':6} {'dtype':8} {'torch img/s':>11} {'jax img/s':>9} {'jax/torch (range)':>17} "
          f"{'jax GFLOP/s':>11} {'torch GFLOP/s':>13}  load")
    torch.manual_seed(0)
    for arch in args.archs.split(","):
        for dtype in dtypes:
            ours = jax_runners(arch, batch, phases, dtype=dtype)
            for r in timed_rows(ours, torch_runners(arch, batch, phases, dtype), args.batch, args.steps,
                                args.repeats):
                ratio = ratio_text(r["ratio"], r["ratio_lo"], r["ratio_hi"])
                print(f"{arch:9} {r['phase']:6} {dtype:8} {r['torch_img_s']:11.1f} {r['jax_img_s']:9.1f} "
                      f"{ratio:>17} {r['jax_gflops']:11.1f} {r['torch_gflops']:13.1f}  {load()}", flush=True)


if __name__ == "__main__":
    main()
