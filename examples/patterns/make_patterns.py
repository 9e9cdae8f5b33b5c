"""Generate the app's photo example: pictures of three kinds of patterned cloth (stripes, polka dots, checks).

Drawn here from a fixed seed, so the example is ours to license (CC0, see README.md) and
reproducible: ``python examples/patterns/make_patterns.py`` rewrites ``support/`` and ``queries/``.
Each picture varies its colours, scale, angle, lighting and grain, so that a classifier has to
recognise the pattern rather than one picture.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
SIZE = 192
SUPPORT_PER_CLASS = 3


def _colours(rng: random.Random) -> tuple[tuple[int, ...], tuple[int, ...]]:
    base = tuple(rng.randrange(150, 256) for _ in range(3))
    ink = tuple(rng.randrange(0, 120) for _ in range(3))
    return base, ink


def stripes(rng: random.Random, canvas: Image.Image, ink: tuple[int, ...]) -> None:
    pen, width = ImageDraw.Draw(canvas), rng.randrange(8, 20)
    for x in range(-2 * SIZE, 3 * SIZE, 2 * width):
        pen.rectangle([x, -SIZE, x + width, 3 * SIZE], fill=ink)


def polka_dots(rng: random.Random, canvas: Image.Image, ink: tuple[int, ...]) -> None:
    pen, step = ImageDraw.Draw(canvas), rng.randrange(22, 40)
    radius = step * rng.uniform(0.2, 0.32)
    for row, y in enumerate(range(-SIZE, 3 * SIZE, step)):
        for x in range(-SIZE + (step // 2) * (row % 2), 3 * SIZE, step):
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=ink)


def checks(rng: random.Random, canvas: Image.Image, ink: tuple[int, ...]) -> None:
    pen, step = ImageDraw.Draw(canvas), rng.randrange(16, 32)
    for i, y in enumerate(range(-SIZE, 3 * SIZE, step)):
        for j, x in enumerate(range(-SIZE, 3 * SIZE, step)):
            if (i + j) % 2:
                pen.rectangle([x, y, x + step - 1, y + step - 1], fill=ink)


PATTERNS = {"stripes": stripes, "polka-dots": polka_dots, "checks": checks}


def picture(pattern, seed: int) -> Image.Image:
    """One photo-like picture: the pattern on a larger canvas, turned, cropped, lit unevenly, with grain."""
    rng = random.Random(seed)
    base, ink = _colours(rng)
    canvas = Image.new("RGB", (3 * SIZE, 3 * SIZE), base)
    pattern(rng, canvas, ink)
    canvas = canvas.rotate(rng.uniform(0, 180), resample=Image.BICUBIC).crop((SIZE, SIZE, 2 * SIZE, 2 * SIZE))
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    pixels = np.asarray(canvas, dtype=np.float32)
    ramp = np.linspace(rng.uniform(0.75, 1.0), rng.uniform(1.0, 1.15), SIZE, dtype=np.float32)
    light = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
    grain = np.random.default_rng(seed).normal(0, 6, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels * light[..., None] + grain, 0, 255).astype(np.uint8))


def main() -> None:
    for index, (name, pattern) in enumerate(PATTERNS.items()):
        folder = HERE / "support" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(SUPPORT_PER_CLASS):
            picture(pattern, 100 * index + i).save(folder / f"{name}-{i + 1}.jpg", quality=88)
        (HERE / "queries").mkdir(exist_ok=True)
        picture(pattern, 100 * index + 50).save(HERE / "queries" / f"{name}.jpg", quality=88)


if __name__ == "__main__":
    main()
