"""bench/vs_fastai.py's tables: where each process's wall time went, per-epoch metrics, parity, speed.

Every run is a dict {"lib": "fastai" | "pml_jax", "label", "seed", "wall", "rows", "best_thresh",
"best_accuracy", "breakdown"}; rows are the epochs with phase, epoch, valid_loss, accuracy_multi, mAP.
"""

from __future__ import annotations

import re
import statistics

# where a process's wall time goes, in the order it happens (they add up to the wall time)
PARTS = ("startup", "train steps", "input wait", "eval", "between epochs", "after training", "exit")
COMPILE = "compile, overlapping"  # pml_jax's compile seconds: mostly in a background thread, so not a part
PART_NOTES = {
    "startup": "interpreter, imports, data table and checks, model and weights, until the first epoch starts",
    "train steps": "training loop time not spent waiting for a batch; pml_jax: a phase's first epoch includes "
                   "any wait for its step's compile",
    "input wait": "training loop time blocked on the next batch",
    "eval": "validation after each epoch",
    "between epochs": "pml_jax: checkpoints (each phase's end) and logging; fastai: callbacks and logging",
    "after training": "final predictions and the threshold sweep; pml_jax also writes its plots, tables and model",
    "exit": "from the last output to the process's end",
    COMPILE: "pml_jax: the seconds of JAX's own log of tracing, lowering and XLA compilation (or loading from "
             "the cache), summed; nearly all of it runs in a background thread during start-up and the "
             "first phase, sharing the cores with the parts above rather than adding to them",
}
COMPILE_LINE = re.compile(r"Finished (?:tracing|jaxpr to MLIR module conversion|XLA compilation) .* in ([0-9.eE+-]+) sec")
CACHE_HIT = "Persistent compilation cache hit"
EPOCH_LINE = re.compile(r"^\s*\d+(\s+-?[0-9.]+(e[-+]?\d+)?){4}\s+\d\d:\d\d\s+[0-9.]+\s+[0-9.]+%$")  # Learner._log_row
OUTPUTS_LINE = "outputs in "


def pml_breakdown(lines: list[tuple[float, str]], rows: list[dict], start: float, end: float,
                  train_images: int) -> dict:
    """Seconds per PARTS of a `run.py` train process from its timestamped output lines and metrics.jsonl rows.

    An epoch ends at its row's line and began `time` earlier; its training part is
    train_images / train_img_s (the row's own measurement), the rest is validation. COMPILE is the
    sum of the compile log lines' seconds, apart from the parts: most run in a background thread.
    """
    ends = [t for t, text in lines if EPOCH_LINE.match(text)]
    done = next((t for t, text in lines if text.startswith(OUTPUTS_LINE)), None)
    if len(ends) != len(rows) or done is None:
        return {"error": f"found {len(ends)} epoch lines for {len(rows)} rows, outputs line: {done is not None}"}
    windows = []  # (part, begin, finish, input wait)
    previous = start
    for row, finish in zip(rows, ends):
        begin = finish - row["time"]
        train = train_images / row["train_img_s"]
        windows += [("startup" if previous == start else "between epochs", previous, begin, 0.0),
                    ("train steps", begin, begin + train, row["input_wait"] * train),
                    ("eval", begin + train, finish, 0.0)]
        previous = finish
    windows += [("after training", previous, done, 0.0), ("exit", done, end, 0.0)]
    compiles = [(t, float(m.group(1))) for t, text in lines if (m := COMPILE_LINE.search(text))]
    parts = dict.fromkeys(PARTS, 0.0)
    for part, begin, finish, wait in windows:
        parts[part] += finish - begin - wait
        parts["input wait"] += wait
    parts[COMPILE] = sum(d for _, d in compiles)
    parts["compile_cache_hits"] = sum(CACHE_HIT in text for _, text in lines)
    return parts


def fastai_breakdown(result: dict, start: float, end: float) -> dict:
    """Seconds per PARTS of a fastai worker process from its callback's epoch timings and events."""
    rows, events = result["rows"], result["events"]
    parts = dict.fromkeys(PARTS, 0.0)
    parts["startup"] = rows[0]["start"] - start
    previous = None
    for row in rows:
        if previous is not None:
            parts["between epochs"] += row["start"] - previous
        parts["input wait"] += row["input_wait_seconds"]
        parts["train steps"] += row["train_seconds"] - row["input_wait_seconds"]
        parts["eval"] += row["eval_seconds"]
        previous = row["start"] + row["train_seconds"] + row["eval_seconds"]
    parts["after training"] = events["end"] - previous
    parts["exit"] = end - events["end"]
    return parts


# ----------------------------------------------------------------------------------------- tables
def _epoch_name(row: dict, frozen_phases: bool) -> str:
    return f"{'frozen ' if frozen_phases and row['phase'] == 0 else ''}{row['epoch'] + 1}"


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _clock(seconds: float) -> str:
    whole = round(seconds)  # rounded first: 179.6 s is 3 min 00 s, not 2 min 60 s
    return f"{whole} s" if whole < 120 else f"{whole // 60} min {whole % 60:02d} s"


def markdown(title: str, runs: list[dict], setup: list[str], same: list[str], differ: list[str],
             frozen_phases: bool) -> str:
    """The whole report as markdown: setup, per-epoch table, final table, time breakdown, parity, speed."""
    head = "| | " + " | ".join(r["label"] for r in runs) + " |\n|---|" + "---|" * len(runs) + "\n"
    out = [f"## {title}", "", *(f"- {line}" for line in setup), "",
           "Same on both sides: " + "; ".join(same) + ".", "",
           "Not the same: " + "; ".join(differ) + ".", "",
           "Per epoch: valid_loss / accuracy_multi@thresh / mAP (macro sklearn AP, fastai's APScoreMulti)", "",
           head.rstrip("\n")]
    for i, row in enumerate(runs[0]["rows"]):
        cells = [f"{r['rows'][i]['valid_loss']:.4f} / {r['rows'][i]['accuracy_multi']:.4f} / "
                 f"{r['rows'][i]['mAP']:.4f}" for r in runs]
        out.append(f"| epoch {_epoch_name(row, frozen_phases)} | " + " | ".join(cells) + " |")
    out += ["", "At the end, and the seed's 29-point threshold sweep on the validation predictions", "",
            head.rstrip("\n")]
    finals = [r["rows"][-1] for r in runs]
    out.append("| valid_loss | " + " | ".join(_num(f["valid_loss"]) for f in finals) + " |")
    out.append("| accuracy_multi@thresh | " + " | ".join(_num(f["accuracy_multi"]) for f in finals) + " |")
    out.append("| mAP | " + " | ".join(_num(f["mAP"]) for f in finals) + " |")
    out.append("| best sweep threshold (its accuracy) | " +
               " | ".join(f"{r['best_thresh']:.3f} ({r['best_accuracy']:.4f})" for r in runs) + " |")
    out.append("| **whole-process wall time** | " + " | ".join(f"**{_clock(r['wall'])}**" for r in runs) + " |")
    for part in (*PARTS, COMPILE):
        out.append(f"| {part} | " + " | ".join(_part(r, part) for r in runs) + " |")
    out.append("| compile cache hits | " + " | ".join(
        str(r["breakdown"].get("compile_cache_hits", "-")) if r["lib"] == "pml_jax" else "-" for r in runs) + " |")
    out += ["", *(f"- {part}: {note}" for part, note in PART_NOTES.items()), "", *parity(runs), "", *speed(runs)]
    return "\n".join(out) + "\n"


def _part(run: dict, part: str) -> str:
    b = run["breakdown"]
    if "error" in b:
        return "n/a"
    if run["lib"] == "fastai" and part == COMPILE:
        return "-"
    return f"{b[part]:.1f} s"


def parity(runs: list[dict]) -> list[str]:
    """Lines comparing the end-of-training metrics: each library's seed spread and the gap of their means."""
    lines = ["Quality parity at the end (2+ seeds each; the cold and warm runs of one seed are the same run twice):", ""]
    for metric in ("valid_loss", "accuracy_multi", "mAP"):
        fa = [r["rows"][-1][metric] for r in runs if r["lib"] == "fastai"]
        ours = [r["rows"][-1][metric] for r in runs if r["lib"] == "pml_jax" and not r.get("warm")]
        if not fa or not ours:
            continue
        spread_fa, spread_ours = max(fa) - min(fa), max(ours) - min(ours)
        gap = abs(statistics.mean(ours) - statistics.mean(fa))
        verdict = "within" if gap <= spread_fa else "outside"
        lines.append(f"- {metric}: fastai {', '.join(f'{v:.4f}' for v in fa)} (spread {spread_fa:.4f}); "
                     f"pml_jax {', '.join(f'{v:.4f}' for v in ours)} (spread {spread_ours:.4f}); "
                     f"|mean difference| {gap:.4f}: {verdict} fastai's seed spread")
    return lines


def speed(runs: list[dict]) -> list[str]:
    """Lines comparing mean whole-process wall times: fastai, pml_jax cold and warm compile cache."""
    def mean_wall(pick):
        walls = [r["wall"] for r in runs if pick(r)]
        return statistics.mean(walls) if walls else None

    fa = mean_wall(lambda r: r["lib"] == "fastai")
    cold = mean_wall(lambda r: r["lib"] == "pml_jax" and not r.get("warm"))
    warm = mean_wall(lambda r: r.get("warm"))
    lines = ["Whole-process wall time (mean over seeds):", ""]
    for name, wall in (("fastai", fa), ("pml_jax, empty compile cache", cold), ("pml_jax, warm compile cache", warm)):
        if wall is not None:
            ratio = f" ({fa / wall:.2f}x fastai's speed)" if fa and name != "fastai" else ""
            lines.append(f"- {name}: {_clock(wall)}{ratio}")
    return lines
