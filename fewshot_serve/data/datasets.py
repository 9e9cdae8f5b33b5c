"""Datasets of many classes, decoded once into one uint8 tensor, and their class splits.

Every image is decoded, fitted and resized once by the model's :class:`Preprocessing` and kept
as ``uint8`` (Omniglot at 28x28: 4 MB for the whole of it), so sampling an episode is tensor
indexing and never touches the disk.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..preprocessing import Preprocessing, open_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

#: Where datasets are looked for when no --data-root is given (this variable, else ../shared).
DATA_ENV = "FEWSHOT_SERVE_DATA"


def default_data_root() -> Path:
    """``$FEWSHOT_SERVE_DATA``, else the ``shared/datasets`` folder beside this checkout."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[3] / "shared" / "datasets"


#: Omniglot's sources under the data root: the whole background set (30 alphabets, the default)
#: and the 8-alphabet subset kept for quick runs and the models trained on it before.
OMNIGLOT_FOLDERS = {"omniglot": "images_background", "omniglot-subset": "images_background_subset"}


def default_omniglot_root(dataset: str = "omniglot") -> Path:
    return default_data_root() / "omniglot" / OMNIGLOT_FOLDERS[dataset]


@dataclass
class ImageClasses:
    """Images of many classes: class ``c`` owns ``images[offsets[c]:offsets[c + 1]]``.

    ``groups`` names each class's group (an Omniglot alphabet, or the class itself), the unit
    that train/val/test splits keep apart.
    """

    images: Tensor  # uint8 [M, C, S, S]
    offsets: Tensor  # int64 [n_classes + 1]
    names: list[str]
    groups: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def counts(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, classes: Sequence[int]) -> ImageClasses:
        parts = [self.images[self.offsets[c] : self.offsets[c + 1]] for c in classes]
        counts = torch.tensor([len(p) for p in parts], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        return ImageClasses(
            torch.cat(parts) if parts else self.images[:0],
            offsets,
            [self.names[c] for c in classes],
            [self.groups[c] for c in classes],
        )

    def joined(self, other: ImageClasses) -> ImageClasses:
        """These classes, then ``other``'s, numbered in that order (class ``len(self)`` is ``other``'s first)."""
        return ImageClasses(
            torch.cat([self.images, other.images]),
            torch.cat([self.offsets, self.offsets[-1] + other.offsets[1:]]),
            self.names + other.names,
            self.groups + other.groups,
        )


def load_class_folders(
    class_dirs: Sequence[tuple[str, str, Path]], preprocessing: Preprocessing, description: str,
    per_class: int | None = None,
) -> ImageClasses:
    """Decode every image of ``(name, group, folder)`` classes with ``preprocessing`` (with
    ``per_class``, only each class's first that many by file name: what keeps a dataset decoded at
    an ImageNet backbone's 224x224 within memory, 150 kB an image)."""
    classes = []
    for name, group, folder in class_dirs:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
        if not images:
            raise ValueError(f"class {name!r} has no images in {folder}")
        classes.append((name, group, images))
    return load_class_files(classes, preprocessing, description)


def load_class_files(
    classes: Sequence[tuple[str, str, Sequence[Path]]], preprocessing: Preprocessing, description: str
) -> ImageClasses:
    """Decode the image files of ``(name, group, files)`` classes with ``preprocessing``, in parallel."""
    files = [list(paths) for _, _, paths in classes]
    flat = [path for paths in files for path in paths]

    def decode(path: Path) -> Tensor:
        return torch.from_numpy(preprocessing.to_uint8(open_image(path)))

    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
        decoded = list(tqdm(pool.map(decode, flat), total=len(flat), desc=f"decoding {description}", leave=False))
    counts = torch.tensor([len(paths) for paths in files], dtype=torch.long)
    return ImageClasses(
        images=torch.stack(decoded),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        names=[name for name, _, _ in classes],
        groups=[group for _, group, _ in classes],
    )


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_omniglot(root: Path, preprocessing: Preprocessing, per_class: int | None = None) -> ImageClasses:
    """Omniglot as ``alphabet/character/*.png`` (the ../shared layout and torchvision's).

    ``root`` may be an ``images_background``-style folder of alphabets, or torchvision's
    ``omniglot-py`` (or its parent), of which only ``images_background`` is read: the 20
    evaluation alphabets stay unseen, for scoring a model on handwriting it never trained beside.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Omniglot not found at {root}; pass --data-root, set ${DATA_ENV}, or use --download"
        )
    if (root / "omniglot-py").is_dir():
        root = root / "omniglot-py"
    if (root / "images_background").is_dir():
        root = root / "images_background"
    classes = [
        (f"{alphabet.name}/{character.name}", alphabet.name, character)
        for alphabet in _subdirs(root)
        for character in _subdirs(alphabet)
    ]
    if not classes:
        raise ValueError(f"no alphabet/character folders under {root}")
    return load_class_folders(classes, preprocessing, "Omniglot", per_class)


def download_omniglot(root: Path) -> Path:
    """Fetch Omniglot's background set (30 alphabets) with torchvision; returns its folder.

    Only the background set: the evaluation alphabets are for scoring, never for training.
    """
    from torchvision.datasets import Omniglot

    Omniglot(str(root), background=True, download=True)
    return Path(root) / "omniglot-py" / "images_background"


def load_folder_tree(root: Path, preprocessing: Preprocessing, per_class: int | None = None) -> ImageClasses:
    """Any ``root/<class>/*.jpg`` tree: each sub-folder is one class (and its own split group)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    classes = [(d.name, d.name, d) for d in _subdirs(root)]
    if not classes:
        raise ValueError(f"{root} holds no class folders")
    return load_class_folders(classes, preprocessing, root.name, per_class)


def load_tiny_imagenet(root: Path, preprocessing: Preprocessing, per_class: int | None = None) -> ImageClasses:
    """Tiny ImageNet as ``images/<wnid>/*.JPEG`` with ``words.txt`` (``<wnid>\t<names>``) beside it.

    Each class is named by the first of its human names in ``words.txt`` (``goldfish``), or by its
    WordNet id where the file lacks it; the id is the class's group, the unit of the split.
    """
    root = Path(root)
    images = root / "images"
    if not images.is_dir():
        raise FileNotFoundError(
            f"Tiny ImageNet not found at {root} (expected {images}/<wnid>/*.JPEG); pass --data-root or set ${DATA_ENV}"
        )
    names = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text(encoding="utf-8").splitlines():
            wnid, _, words = line.partition("\t")
            if words.strip():
                names[wnid.strip()] = words.split(",")[0].strip()
    classes = [(names.get(d.name, d.name), d.name, d) for d in _subdirs(images)]
    if not classes:
        raise ValueError(f"{images} holds no class folders")
    return load_class_folders(classes, preprocessing, "Tiny ImageNet", per_class)


# The CIFAR-FS class split of Bertinetto et al. (ICLR 2019); the other 64 classes are for training.
CIFAR_FS_VAL = (
    "otter motorcycle television lamp crocodile shark butterfly beaver beetle tractor flatfish "
    "maple_tree camel crab sea cattle"
).split()
CIFAR_FS_TEST = (
    "baby bed bicycle chimpanzee fox leopard man pickup_truck plain poppy rocket rose snail "
    "sweet_pepper table telephone wardrobe whale woman worm"
).split()


def load_cifar100(root: Path, preprocessing: Preprocessing, download: bool) -> ImageClasses:
    """All 60,000 CIFAR-100 images (train and test parts) grouped by fine class, via torchvision.

    CIFAR-100's Python files are pickles; torchvision unpickles them only after their MD5 sums
    match the official release, so nothing but that release is ever unpickled.
    """
    from torchvision.datasets import CIFAR100

    parts = [CIFAR100(str(root), train=train, download=download) for train in (True, False)]
    names = parts[0].classes
    per_class: list[list[Tensor]] = [[] for _ in names]
    for part in parts:
        for array, label in zip(part.data, part.targets):
            per_class[label].append(torch.from_numpy(array).permute(2, 0, 1))
    if preprocessing.image_size != 32 or preprocessing.channels != 3:
        raise ValueError("CIFAR-FS models use 32x32 RGB input")
    counts = torch.tensor([len(images) for images in per_class], dtype=torch.long)
    return ImageClasses(
        images=torch.stack([image for images in per_class for image in images]),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]),
        names=list(names),
        groups=list(names),
    )


SPLITS = ("train", "val", "test")


def load_mini_imagenet(root: Path, preprocessing: Preprocessing) -> dict[str, ImageClasses]:
    """miniImageNet from the Ravi & Larochelle split files: ``root/{train,val,test}.csv`` and ``root/images/``.

    Each CSV has a ``filename,label`` header and one row per image; the split files define the
    64/16/20 class split, so no seed is involved. Image names must be plain file names inside
    ``images/`` (a CSV cannot point elsewhere on the disk).
    """
    root = Path(root)
    images = root / "images"
    missing = [str(root / f"{split}.csv") for split in SPLITS if not (root / f"{split}.csv").is_file()]
    if missing or not images.is_dir():
        raise FileNotFoundError(
            f"miniImageNet not found at {root}: it needs train.csv, val.csv, test.csv and an images/ folder "
            f"(the Ravi & Larochelle release); missing {', '.join(missing) or str(images)}"
        )
    splits = {}
    for split in SPLITS:
        by_label: dict[str, list[Path]] = {}
        with open(root / f"{split}.csv", newline="") as handle:
            rows = csv.reader(handle)
            if [cell.strip() for cell in next(rows, [])] != ["filename", "label"]:
                raise ValueError(f"{root / f'{split}.csv'}: expected the header 'filename,label'")
            for line, row in enumerate(rows, start=2):
                if len(row) != 2 or Path(row[0]).name != row[0] or row[0] in ("", ".", ".."):
                    raise ValueError(f"{root / f'{split}.csv'} line {line}: expected 'file name,label', got {row}")
                by_label.setdefault(row[1], []).append(images / row[0])
        classes = [(label, label, paths) for label, paths in sorted(by_label.items())]
        splits[split] = load_class_files(classes, preprocessing, f"miniImageNet {split}")
    overlap = set(splits["train"].names) & (set(splits["val"].names) | set(splits["test"].names))
    if overlap or set(splits["val"].names) & set(splits["test"].names):
        raise ValueError(f"{root}: the split files share classes ({', '.join(sorted(overlap)[:5])}...)")
    return splits


def split_by_group(
    classes: ImageClasses, seed: int, val_fraction: float = 0.125, test_fraction: float = 0.25
) -> dict[str, ImageClasses]:
    """Deterministic disjoint train/val/test splits of whole groups, shuffled by ``seed``."""
    groups = sorted(set(classes.groups))
    random.Random(seed).shuffle(groups)
    n_test = max(1, round(test_fraction * len(groups)))
    n_val = max(1, round(val_fraction * len(groups)))
    if n_test + n_val >= len(groups):
        raise ValueError(f"{len(groups)} class groups are too few for a train/val/test split")
    assignment = {g: "test" for g in groups[:n_test]}
    assignment.update({g: "val" for g in groups[n_test : n_test + n_val]})
    return _split(classes, lambda i: assignment.get(classes.groups[i], "train"))


def split_cifar_fs(classes: ImageClasses) -> dict[str, ImageClasses]:
    val, test = set(CIFAR_FS_VAL), set(CIFAR_FS_TEST)
    def split_of(index: int) -> str:
        name = classes.names[index]
        return "val" if name in val else "test" if name in test else "train"

    return _split(classes, split_of)


def _split(classes: ImageClasses, split_of) -> dict[str, ImageClasses]:
    return {
        split: classes.subset([i for i in range(len(classes)) if split_of(i) == split]) for split in SPLITS
    }
