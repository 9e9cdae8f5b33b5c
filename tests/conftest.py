"""Shared fixtures: small generated datasets, so the suite runs anywhere without ../shared."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fewshot_serve.data.datasets import default_omniglot_root


def draw_glyph(class_seed: int, image_seed: int, size: int = 32, colour: bool = False) -> Image.Image:
    """A class-specific stroke pattern (black ink on white), jittered per image."""
    strokes = random.Random(class_seed)
    jitter = random.Random(image_seed)
    image = Image.new("RGB" if colour else "L", (size, size), "white")
    pen = ImageDraw.Draw(image)
    ink = tuple(strokes.randrange(0, 160) for _ in range(3)) if colour else 0
    for _ in range(3):
        points = [(strokes.uniform(4, size - 4) + jitter.uniform(-1.5, 1.5),
                   strokes.uniform(4, size - 4) + jitter.uniform(-1.5, 1.5)) for _ in range(3)]
        pen.line(points, fill=ink, width=3)
    return image


def write_class_tree(root: Path, classes: int, per_class: int, colour: bool = False) -> Path:
    for c in range(classes):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw_glyph(c, 1000 * c + i, colour=colour).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def glyph_tree(tmp_path_factory) -> Path:
    """24 generated grayscale classes of 8 images each, laid out one folder per class."""
    return write_class_tree(tmp_path_factory.mktemp("glyphs"), classes=24, per_class=8)


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory) -> Path:
    """A tiny colour-image model (2 iterations on generated colour classes), for serving several models."""
    from fewshot_serve.data.sources import DataSpec
    from fewshot_serve.training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("colour")
    tree = write_class_tree(root / "classes", classes=24, per_class=4, colour=True)
    config = TrainConfig(out=root / "colour-conv4.safetensors", algorithm="fomaml",
                         data=DataSpec("folder", tree, image_size=32), ways=3, shots=1, queries=2, train_steps=2,
                         meta_batch=2, iterations=2, val_every=2, val_episodes=2)
    return train(config, progress=False).model_path


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    root = default_omniglot_root("omniglot-subset")  # the 8-alphabet subset keeps these tests quick
    if not root.is_dir():
        pytest.skip(f"real Omniglot data not found at {root} (set FEWSHOT_SERVE_DATA to its datasets folder)")
    return root


@pytest.fixture(scope="session")
def omniglot_full_root() -> Path:
    root = default_omniglot_root("omniglot")  # all 30 background alphabets: the shipped model's split
    if not root.is_dir():
        pytest.skip(f"real Omniglot data not found at {root} (set FEWSHOT_SERVE_DATA to its datasets folder)")
    return root


def assert_onnx_export_agrees(adapted, queries, rows: list[dict[str, float]], path: Path) -> None:
    """Export ``adapted`` to ``path``; onnxruntime must give ``queries`` the probabilities torch gave
    (``rows``, from ``adapted.classify``) within 1e-4, label by label."""
    import fewshot_serve

    adapted.export_onnx(path)
    onnx_rows = fewshot_serve.OnnxClassifier(path).classify(queries)
    for row, onnx_row in zip(rows, onnx_rows):
        np.testing.assert_allclose([row[k] for k in row], [onnx_row[k] for k in row], atol=1e-4)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_tiny_imagenet(root: Path, classes: int, per_class: int) -> Path:
    """Tiny ImageNet's layout (``images/<wnid>/*.JPEG`` and ``words.txt``) with generated colour classes."""
    for c in range(classes):
        folder = root / "images" / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            draw_glyph(500 + c, 7000 * c + i, colour=True).save(folder / f"n{c:08d}_{i}.JPEG", quality=95)
    (root / "words.txt").write_text("".join(f"n{c:08d}\tthing {c}, other name\n" for c in range(classes)))
    return root


@pytest.fixture(scope="session")
def tiny_imagenet_tree(tmp_path_factory) -> Path:
    """40 generated colour classes of 20 photos each, in Tiny ImageNet's layout (splits 25 / 5 / 10)."""
    return write_tiny_imagenet(tmp_path_factory.mktemp("tiny-imagenet"), classes=40, per_class=20)


@pytest.fixture(autouse=True, scope="session")
def frozen_part_cache(tmp_path_factory):
    """Serving's onnxruntime exports go to a folder of this run, not the user's ~/.cache."""
    import os

    os.environ["FEWSHOT_SERVE_CACHE"] = str(tmp_path_factory.mktemp("frozen-part-cache"))


def with_recipe(source: Path, out: Path, **changes) -> Path:
    """A copy of the model file ``source`` at ``out`` with ``changes`` to its recipe's fields."""
    import dataclasses

    from fewshot_serve.files.model_file import load_model, save_model

    network, recipe = load_model(source)
    save_model(out, network, dataclasses.replace(recipe, **changes))
    return out
