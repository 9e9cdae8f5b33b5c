"""CIFAR-FS and miniImageNet, end to end on generated colour images (the real ones are not reachable here).

The loaders, splits, trainer, evaluator and serving run exactly as they would on the real data;
only the pixels are generated: one random colour stroke pattern per class.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torchvision
from conftest import draw_glyph

from fewshot_serve import cli
from fewshot_serve.data.datasets import CIFAR_FS_TEST, CIFAR_FS_VAL
from fewshot_serve.data.sources import DataSpec, load_splits, standard_preprocessing
from fewshot_serve.files.model_file import load_model
from fewshot_serve.serving.api import load
from fewshot_serve.training.trainer import TrainConfig, train

TINY_RUN = dict(ways=3, shots=1, queries=2, train_steps=2, meta_batch=2, iterations=2, val_every=2, val_episodes=4,
                learned_lrs=True, per_step_norm=True)


def write_mini_imagenet(root: Path, per_split=(6, 3, 3), per_class=5) -> Path:
    """The Ravi & Larochelle layout: images/ plus train/val/test.csv of filename,label rows."""
    (root / "images").mkdir(parents=True)
    wnid = 0
    for split, classes in zip(("train", "val", "test"), per_split):
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for _ in range(classes):
                wnid += 1
                label = f"n{wnid:08d}"
                for i in range(per_class):
                    name = f"{label}{i:08d}.jpg"
                    draw_glyph(wnid, 100 * wnid + i, size=100, colour=True).save(root / "images" / name)
                    writer.writerow([name, label])
    return root


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory) -> Path:
    return write_mini_imagenet(tmp_path_factory.mktemp("mini-imagenet"))


def test_mini_imagenet_splits_come_from_the_csv_files(mini_imagenet):
    spec = DataSpec("mini-imagenet", mini_imagenet)
    splits = load_splits(spec, standard_preprocessing(spec))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert splits["val"].names == ["n00000007", "n00000008", "n00000009"]
    assert splits["train"].images.shape == (30, 3, 84, 84)


def test_mini_imagenet_trains_evaluates_and_serves_colour_images(tmp_path, mini_imagenet, capsys):
    result = train(TrainConfig(out=tmp_path / "mini.safetensors", data=DataSpec("mini-imagenet", mini_imagenet),
                               algorithm="fomaml", **TINY_RUN), progress=False)
    network, recipe = load_model(result.model_path)
    assert recipe.dataset == "mini-imagenet" and recipe.network["filters"] == 32
    assert recipe.preprocessing["image_size"] == 84 and recipe.preprocessing["channels"] == 3
    assert cli.main(["evaluate", str(result.model_path), "--data-root", str(mini_imagenet), "--ways", "3",
                     "--queries", "2", "--episodes", "4"]) == 0
    assert '"accuracy"' in capsys.readouterr().out
    support = {f"class {c}": [draw_glyph(c, i, size=100, colour=True) for i in range(2)] for c in (1, 2, 3)}
    rows = load(result.model_path).adapt(support).classify([draw_glyph(2, 7, size=100, colour=True)])
    assert list(rows[0]) == list(support) and sum(rows[0].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("problem, message", [
    ("traversal", "expected 'file name,label'"),
    ("header", "expected the header"),
    ("missing csv", "needs train.csv, val.csv, test.csv"),
    ("shared class", "share classes"),
])
def test_mini_imagenet_refuses_bad_split_files(tmp_path, problem, message):
    root = write_mini_imagenet(tmp_path / "data", per_split=(2, 2, 2), per_class=1)
    test_csv = root / "test.csv"
    if problem == "traversal":
        test_csv.write_text("filename,label\n../../etc/passwd,n1\n")
    elif problem == "header":
        test_csv.write_text("file,class\n")
    elif problem == "missing csv":
        test_csv.unlink()
    else:
        test_csv.write_text((root / "train.csv").read_text())
    spec = DataSpec("mini-imagenet", root)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_splits(spec, standard_preprocessing(spec))


def test_mini_imagenet_has_no_downloader(tmp_path):
    spec = DataSpec("mini-imagenet", tmp_path, download=True)
    with pytest.raises(ValueError, match="no downloader"):
        load_splits(spec, standard_preprocessing(spec))


class FakeCIFAR100:
    """torchvision's CIFAR100 interface (uint8 32x32x3 images, fine labels, names) on generated images."""

    classes = sorted(CIFAR_FS_VAL + CIFAR_FS_TEST + [f"train_class_{i:02d}" for i in range(64)])

    def __init__(self, root, train, download):
        per_class = 4 if train else 2
        self.targets = [c for c in range(100) for _ in range(per_class)]
        self.data = np.stack([np.asarray(draw_glyph(c, 10 * c + i + 5 * train, colour=True))
                              for c in range(100) for i in range(per_class)])


def test_cifar_fs_trains_and_serves_through_the_standard_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR100)
    result = train(TrainConfig(out=tmp_path / "cifarfs.safetensors", data=DataSpec("cifar-fs", tmp_path),
                               algorithm="maml", **TINY_RUN), progress=False)
    network, recipe = load_model(result.model_path)
    assert recipe.dataset == "cifar-fs" and recipe.class_counts == {"train": 64, "val": 16, "test": 20}
    assert recipe.network == {"architecture": "conv4", "in_channels": 3, "filters": 32, "image_size": 32,
                              "norm_states": 3, "lr_steps": 2}
    support = {name: [draw_glyph(c, i, colour=True) for i in range(3)] for c, name in enumerate("abcde")}
    assert len(load(result.model_path).adapt(support).classify([draw_glyph(0, 9, colour=True)])[0]) == 5
