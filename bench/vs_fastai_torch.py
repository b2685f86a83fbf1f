"""The PyTorch side of bench/vs_fastai.py, one job per process (so its wall time is the whole process's).

    python bench/vs_fastai_torch.py pretrain JOB.json     # plain PyTorch: a brief from-scratch training,
                                                          # saved as a torchvision-format state_dict .pth
    python bench/vs_fastai_torch.py fastai JOB.json       # the fastbook ch. 6 recipe with real fastai

JOB.json holds the job's settings (written by bench/vs_fastai.py); the result JSON goes to its
`result` path. Timestamps in the result are `time.time()` seconds, so the parent can place them
inside the process it timed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

T_START = time.time()  # before the heavy imports: the parent measures them as startup

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from fastai.callback.core import Callback  # noqa: E402

SWEEP = np.linspace(0.05, 0.95, 29)  # the seed notebook's torch.linspace(0.05, 0.95, 29)


def read_table(csv: str) -> pd.DataFrame:
    """fname, labels (space-separated; '' = none), is_valid, as pml_jax's generator writes them."""
    return pd.read_csv(csv, keep_default_na=False)


# ----------------------------------------------------------------------------------------- pretrain
class MultiLabelImages(torch.utils.data.Dataset):
    """(normalised CHW float image, multi-hot target) for the rows of `df`."""

    def __init__(self, df: pd.DataFrame, images: Path, vocab: list[str], transform):
        self.files = [images / f for f in df["fname"]]
        index = {v: i for i, v in enumerate(vocab)}
        self.targets = torch.zeros(len(df), len(vocab))
        for row, labels in enumerate(df["labels"]):
            for label in labels.split():
                self.targets[row, index[label]] = 1.0
        self.transform = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), self.targets[i]


def pretrain(job: dict) -> dict:
    """Train a torchvision `arch` from scratch (residual branches zero-initialised when the job says so) on
    job["csv"] for job["epochs"] epochs; save its state_dict."""
    from sklearn.metrics import average_precision_score
    from torchvision import transforms as T

    torch.manual_seed(job["seed"])
    df = read_table(job["csv"])
    vocab = sorted({label for labels in df["labels"] for label in labels.split()})
    normalise = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    size = job["size"]
    train_tf = T.Compose([T.RandomResizedCrop(size, scale=(job["min_scale"], 1.0)), T.RandomHorizontalFlip(),
                          T.ToTensor(), normalise])
    valid_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), normalise])
    images = Path(job["images"])
    train = MultiLabelImages(df[~df["is_valid"]], images, vocab, train_tf)
    valid = MultiLabelImages(df[df["is_valid"]], images, vocab, valid_tf)
    loader = torch.utils.data.DataLoader(train, batch_size=job["batch_size"], shuffle=True, drop_last=True,
                                         num_workers=min(2, os.cpu_count() or 1), persistent_workers=True)
    model = getattr(torchvision.models, job["arch"])(weights=None, num_classes=len(vocab),
                                                     zero_init_residual=job["zero_init_residual"])
    opt = torch.optim.AdamW(model.parameters(), lr=job["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=job["lr"], total_steps=job["epochs"] * len(loader))
    t0 = time.time()
    for _ in range(job["epochs"]):
        model.train()
        for x, y in loader:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        probs = torch.cat([torch.sigmoid(model(x)) for x, _ in
                           torch.utils.data.DataLoader(valid, batch_size=64)]).numpy()
    targets = valid.targets.numpy()
    tmp = Path(job["pth"] + ".tmp")
    torch.save(model.state_dict(), tmp)  # torchvision's own key names and layouts
    os.replace(tmp, job["pth"])
    return {"vocab": vocab, "train_seconds": time.time() - t0, "n_train": len(train), "n_valid": len(valid),
            "valid_mAP": float(average_precision_score(targets, probs, average="macro")),
            "valid_accuracy_multi@0.5": float(((probs > 0.5) == targets).mean())}


# ----------------------------------------------------------------------------------------- fastai
def fastai_finetune(job: dict) -> dict:
    """fastbook ch. 6 with fastai: DataBlock from the CSV, vision_learner on the .pth body, fine_tune, sweep."""
    from functools import partial

    from fastai.vision.all import (APScoreMulti, ColReader, ColSplitter, DataBlock, ImageBlock,  # as the seed does
                                   MultiCategoryBlock, RandomResizedCrop, accuracy_multi, model_meta, set_seed,
                                   vision_learner)

    t_imported = time.time()
    set_seed(job["seed"])
    dblock = DataBlock(blocks=(ImageBlock, MultiCategoryBlock), splitter=ColSplitter("is_valid"),
                       get_x=ColReader("fname", pref=str(job["images"]) + os.sep),
                       get_y=ColReader("labels", label_delim=" "),
                       item_tfms=RandomResizedCrop(job["size"], min_scale=job["min_scale"]))
    dls = dblock.dataloaders(read_table(job["csv"]), bs=job["batch_size"])
    arch = torchvision_from_file(job["arch"], job["pth"])
    # the torchvision resnet's own entry: cut -2, _resnet_split, imagenet_stats; weights = our file
    model_meta[arch] = {**model_meta[getattr(torchvision.models, job["arch"])], "weights": job["pth"]}
    log = EpochLog()
    learn = vision_learner(dls, arch, metrics=[partial(accuracy_multi, thresh=job["thresh"]), APScoreMulti()],
                           cbs=[log])  # pretrained=True: normalises with imagenet_stats and freezes the body
    t_fit = time.time()
    learn.fine_tune(job["epochs"], base_lr=job["base_lr"], freeze_epochs=job["freeze_epochs"])
    t_fitted = time.time()
    preds, targs = learn.get_preds()  # probabilities (BCEWithLogitsLossFlat's activation)
    accs = [float(accuracy_multi(preds, targs, thresh=float(t), sigmoid=False)) for t in SWEEP]  # the seed's sweep
    best = int(np.argmax(accs))
    return {
        "rows": log.rows, "vocab": list(dls.vocab),
        "n_train": len(dls.train_ds), "n_valid": len(dls.valid_ds),
        "sweep": {"thresholds": SWEEP.tolist(), "accuracy_multi": accs},
        "best_thresh": float(SWEEP[best]), "best_accuracy": accs[best],
        "events": {"start": T_START, "imported": t_imported, "fit_start": t_fit, "fit_end": t_fitted,
                   "end": time.time()},
        "torch_threads": torch.get_num_threads(), "num_workers": dls.train.fake_l.num_workers,
    }


def torchvision_from_file(arch: str, pth: str):
    """A torchvision model constructor `f(weights=path)` that loads `path` (its fc sized from the file)."""
    build = getattr(torchvision.models, arch)

    def from_file(weights=None, **kwargs):
        if weights is None:
            return build(weights=None, **kwargs)
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        model = build(weights=None, num_classes=sd["fc.weight"].shape[0])
        model.load_state_dict(sd)
        return model

    from_file.__name__ = f"{arch}_from_{Path(pth).stem}"
    return from_file


class EpochLog(Callback):
    """Records each epoch's losses and metrics (the Recorder's values) and its train, eval and input-wait seconds."""

    order = 51  # after the Recorder (50), whose values hold the epoch's losses and metrics

    def __init__(self):
        self.rows, self.phase = [], -1

    def before_fit(self):
        self.phase += 1

    def before_epoch(self):
        self.t0, self.wait, self.trained = time.time(), 0.0, False

    def before_train(self):
        self.batch_end, self.trained = time.time(), True

    def before_batch(self):  # fastai calls it once the batch has been fetched
        if self.training:
            self.wait += time.time() - self.batch_end

    def after_batch(self):
        if self.training:
            self.batch_end = time.time()

    def before_validate(self):
        self.t_train = time.time()

    def after_epoch(self):
        if not self.trained:  # get_preds sends the fit and epoch events too, with no training
            return
        train_loss, valid_loss, acc, ap = (float(v) for v in self.recorder.values[-1])
        now = time.time()
        self.rows.append({"phase": self.phase, "epoch": self.epoch, "train_loss": train_loss,
                          "valid_loss": valid_loss, "accuracy_multi": acc, "mAP": ap,
                          "start": self.t0, "train_seconds": self.t_train - self.t0,
                          "eval_seconds": now - self.t_train, "input_wait_seconds": self.wait})


JOBS = {"pretrain": pretrain, "fastai": fastai_finetune}


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in JOBS:
        print(f"usage: python {sys.argv[0]} {{{'|'.join(JOBS)}}} JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(sys.argv[2]).read_text())
    result = JOBS[sys.argv[1]](job)
    Path(job["result"]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
