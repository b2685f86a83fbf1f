"""The embedded default dataset: shapes on textured backgrounds, written once in fastai's pascal layout.

Each image (96-200 px sides, aspect 3:4 to 4:3) carries 0-4 shapes out of 8 classes, placed one per cell
of a 2x2 grid with jitter (so they do not overlap), with random colours contrasting with the local
background, scales and rotations; colour says nothing about the class. Image i is drawn from its
own random stream `default_rng([seed, i])`, so the set is a pure function of its parameters.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from pml_jax.data.dataset import LabelledImages
from pml_jax.data.tables import from_csv
from pml_jax.errors import PmlError
from pml_jax.paths import cache_dir

VERSION = 4  # bump when the drawing code changes: it is part of the cache key
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent")
GRID = 2  # objects sit in distinct cells of a GRID x GRID layout
# The grid fills the central 1 - 2*MARGIN of each side, so fastai's validation crop (the central
# size/(size+xtra) = 80% at 64 px) keeps the objects whole.
MARGIN = 0.1
ASPECTS = (3 / 4, 4 / 3)  # range of width / height, log-uniform (photo-like; squishing keeps shapes)


@dataclass(frozen=True)
class SyntheticParams:
    """Everything the generated set depends on (sides in pixels, valid_pct a fraction)."""

    n_images: int = 2500
    seed: int = 0
    min_side: int = 96
    max_side: int = 200
    max_objects: int = 4
    valid_pct: float = 0.2

    def key(self) -> str:
        """Cache folder name: generator version + hash of the parameters."""
        text = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return f"v{VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class Shape:
    """One drawn object: class name, box (x0, y0, x1, y1) in pixels, RGB colour, rotation in degrees."""

    name: str
    box: tuple[int, int, int, int]
    colour: tuple[int, int, int]
    angle: float


def synthetic(
    root: Path | str | None = None,
    n_images: int = 2500,
    seed: int = 0,
    min_side: int = 96,
    max_side: int = 200,
    max_objects: int = 4,
    valid_pct: float = 0.2,
) -> LabelledImages:
    """The synthetic set in pascal_2007 layout (`train.csv` + `train/*.jpg`), generated once.

    `root` None = `cache_dir('synthetic')/<key of the parameters>`. A folder already holding the
    set is reused; otherwise it is written to a temporary sibling and renamed into place, so an
    interrupted run never leaves a half set. About 20% (`valid_pct`) of the images are validation.
    """
    params = SyntheticParams(n_images, seed, min_side, max_side, max_objects, valid_pct)
    if not (n_images >= 1 and 16 <= min_side <= max_side and 0 <= max_objects <= GRID * GRID and 0 <= valid_pct < 1):
        raise PmlError(f"invalid synthetic parameters {params}")
    path = Path(root) if root is not None else cache_dir("synthetic") / params.key()
    if not (path / "train.csv").is_file():
        _write_atomically(path, params)
    stamp = json.loads((path / "params.json").read_text()) if (path / "params.json").is_file() else None
    if stamp != {"version": VERSION, **asdict(params)}:
        raise PmlError(f"{path} holds a different dataset than synthetic{asdict(params)}; use another root")
    return from_csv(path / "train.csv", path / "train", name="synthetic")


def _write_atomically(path: Path, params: SyntheticParams) -> None:
    if path.exists() and any(path.iterdir()):
        raise PmlError(f"{path} exists and is not a synthetic dataset (no train.csv); use another root")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        write_set(tmp, params)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "train.csv").is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_set(folder: Path, params: SyntheticParams) -> None:
    """Write train/<i>.jpg, train.csv (fname, labels, is_valid) and params.json into `folder`."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    valid = np.zeros(params.n_images, bool)  # its stream [seed, n_images] is no image's [seed, i < n_images]
    valid[np.random.default_rng([params.seed, params.n_images]).permutation(params.n_images)[
        : int(params.valid_pct * params.n_images)]] = True

    def write(i: int) -> tuple[str, str, bool]:
        data, shapes = render(i, params)
        fname = f"{i:05d}.jpg"
        (folder / "train" / fname).write_bytes(data)
        return fname, " ".join(dict.fromkeys(s.name for s in shapes)), bool(valid[i])

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL and numpy release the GIL
        rows = list(tqdm(pool.map(write, range(params.n_images)), total=params.n_images, leave=False,
                         desc="generating the synthetic set", disable=None))  # no bar off a terminal
    pd.DataFrame(rows, columns=["fname", "labels", "is_valid"]).to_csv(folder / "train.csv", index=False)
    (folder / "params.json").write_text(json.dumps({"version": VERSION, **asdict(params)}, sort_keys=True))


def render(index: int, params: SyntheticParams) -> tuple[bytes, list[Shape]]:
    """JPEG bytes of image `index` and the shapes drawn on it, in drawing order."""
    rng = np.random.default_rng([params.seed, index])
    w = int(rng.integers(params.min_side, params.max_side + 1))
    h = int(np.clip(round(w / np.exp(rng.uniform(*np.log(ASPECTS)))), params.min_side, params.max_side))
    pixels = background(rng, h, w)
    n = int(rng.integers(0, params.max_objects + 1))
    cells = rng.permutation(GRID * GRID)[:n]
    cw, ch = w * (1 - 2 * MARGIN) / GRID, h * (1 - 2 * MARGIN) / GRID
    image = Image.fromarray(pixels)
    shapes = []
    for cell in cells:
        name = SHAPES[int(rng.integers(len(SHAPES)))]
        side = int(min(cw, ch) * rng.uniform(0.7, 0.95))
        x0 = int(MARGIN * w + (cell % GRID) * cw + rng.uniform(0, cw - side))
        y0 = int(MARGIN * h + (cell // GRID) * ch + rng.uniform(0, ch - side))
        angle = float(rng.uniform(0, 360))
        colour = contrasting_colour(rng, pixels[y0 : y0 + side, x0 : x0 + side])
        image.paste(colour, (x0, y0), shape_mask(name, side, angle))
        shapes.append(Shape(name, (x0, y0, x0 + side, y0 + side), colour, angle))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=int(rng.integers(70, 96)))
    return out.getvalue(), shapes


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 [h, w, 3]: a linear gradient or stripes between two nearby colours, plus Gaussian noise."""
    c1 = rng.uniform(0, 255, size=3)
    c2 = np.clip(c1 + rng.uniform(-60, 60, size=3), 0, 255)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)
    if rng.random() < 0.5:
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    else:
        t = 0.5 + 0.5 * np.sin(along * 2 * np.pi / rng.uniform(6, 30))
    img = c1 + t[..., None] * (c2 - c1) + rng.normal(0, rng.uniform(3, 12), size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def contrasting_colour(rng: np.random.Generator, patch: np.ndarray) -> tuple[int, int, int]:
    """A random RGB colour whose luma differs from the patch's mean luma by at least 80."""
    luma = np.array([0.299, 0.587, 0.114])
    bg = float(patch.reshape(-1, 3).mean(0) @ luma)
    for _ in range(32):
        c = rng.integers(0, 256, size=3)
        if abs(float(c @ luma) - bg) >= 80:
            return tuple(int(v) for v in c)
    return (0, 0, 0) if bg > 127 else (255, 255, 255)


def shape_mask(name: str, side: int, angle: float) -> Image.Image:
    """'L' mask [side, side] of a shape centred in its box; square, diamond and cross turn at most 12°."""
    scale = 4  # draw supersampled, then downsample for smooth edges
    size = side * scale
    r = size / 2 - scale
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    c = size / 2
    small_turn = (angle % 24.0) - 12.0  # keeps square/diamond/cross from turning into one another
    if name == "circle":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
    elif name == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), outline=255, width=max(1, int(r * 0.32)))
    elif name == "crescent":  # a disc minus a disc shifted by 0.55 r along `angle`
        dx, dy = 0.55 * r * np.cos(np.radians(angle)), -0.55 * r * np.sin(np.radians(angle))
        draw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        draw.ellipse((c + dx - 0.85 * r, c + dy - 0.85 * r, c + dx + 0.85 * r, c + dy + 0.85 * r), fill=0)
    else:
        draw.polygon(_polygon(name, c, r, angle, small_turn), fill=255)
    return mask.resize((side, side), Image.Resampling.BOX)


def _polygon(name: str, c: float, r: float, angle: float, small_turn: float) -> list[tuple[float, float]]:
    if name == "triangle":
        radii, angles = [r] * 3, _evenly(3, angle)
    elif name == "star":
        radii, angles = [r, r * 0.42] * 5, _evenly(10, angle)
    elif name == "square":
        radii, angles = [r] * 4, _evenly(4, 45 + small_turn)
    elif name == "diamond":
        radii, angles = [r, r * 0.6] * 2, _evenly(4, 90 + small_turn)
    elif name == "cross":
        a = 0.32  # half arm width over the radius
        corners = [(a, 1), (a, a), (1, a), (1, -a), (a, -a), (a, -1),
                   (-a, -1), (-a, -a), (-1, -a), (-1, a), (-a, a), (-a, 1)]
        radii = [r * np.hypot(x, y) for x, y in corners]
        angles = [np.degrees(np.arctan2(y, x)) + small_turn for x, y in corners]
    else:
        raise PmlError(f"unknown shape {name!r}; known: {list(SHAPES)}")
    return [(c + q * np.cos(np.radians(t)), c - q * np.sin(np.radians(t))) for q, t in zip(radii, angles)]


def _evenly(n: int, start: float) -> list[float]:
    return [start + k * 360.0 / n for k in range(n)]
