"""From a dataset name to task samplers for each split, with that dataset's standard recipe.

The trainer and the evaluator both come through here, so ``evaluate`` rebuilds exactly the
test split the model file's recipe (dataset name and split seed) was trained beside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..config_flags import setting
from ..networks import Conv4, MetaNetwork, ResNet12, SinusoidMLP
from ..preprocessing import Preprocessing
from .augmentation import augment_photos
from .datasets import (
    ImageClasses,
    default_data_root,
    default_omniglot_root,
    download_omniglot,
    load_cifar100,
    load_folder_tree,
    load_mini_imagenet,
    load_omniglot,
    load_tiny_imagenet,
    split_by_group,
    split_cifar_fs,
)
from .episodes import ImageEpisodes, SinusoidTasks
from .text_datasets import TextClasses, load_arsc, load_clinc150

ARCHITECTURES = ("conv4", "resnet12")
#: ResNet-12 block widths of the literature (Lee et al. 2019); narrower ones suit a CPU.
RESNET12_WIDTHS = (64, 160, 320, 640)


def _omniglot(spec: DataSpec, preprocessing: Preprocessing) -> dict[str, ImageClasses]:
    # The dataset name, which the recipe records, says which set: a model's test alphabets are
    # rebuilt from the same set it was trained beside.
    root = spec.data_root or default_omniglot_root(spec.dataset)
    if spec.download:
        if spec.dataset != "omniglot":
            raise ValueError(f"{spec.dataset} is this project's choice of 8 background alphabets, not a "
                             "download; use --dataset omniglot --download for the whole background set")
        root = download_omniglot(root)
    return split_by_group(load_omniglot(root, preprocessing, spec.images_per_class), spec.split_seed)


def _tiny_imagenet(spec: DataSpec, preprocessing: Preprocessing) -> dict[str, ImageClasses]:
    # 160 classes -> 100 train / 20 validation / 40 test, shuffled by the split seed
    root = spec.data_root or default_data_root() / "tiny-imagenet"
    return split_by_group(load_tiny_imagenet(root, preprocessing, spec.images_per_class), spec.split_seed)


def _cifar_fs(spec: DataSpec, preprocessing: Preprocessing) -> dict[str, ImageClasses]:
    root = spec.data_root or default_data_root() / "cifar100"
    return split_cifar_fs(load_cifar100(root, preprocessing, spec.download))


def _mini_imagenet(spec: DataSpec, preprocessing: Preprocessing) -> dict[str, ImageClasses]:
    if spec.download:
        raise ValueError("miniImageNet has no downloader: point --data-root at the folder with its split CSVs")
    return load_mini_imagenet(spec.data_root or default_data_root() / "mini-imagenet", preprocessing)


def _folder(spec: DataSpec, preprocessing: Preprocessing) -> dict[str, ImageClasses]:
    if spec.data_root is None:
        raise ValueError("--dataset folder needs --data-root pointing at a folder of class folders")
    return split_by_group(load_folder_tree(spec.data_root, preprocessing, spec.images_per_class), spec.split_seed)


@dataclass(frozen=True)
class ImageDataset:
    """A dataset's standard recipe: how its images are prepared, how its classes load and split."""

    image_size: int
    channels: int
    invert: bool  # dark strokes on white become bright on black (handwriting)
    fit: str  # "pad" keeps the aspect ratio, "squash" resizes to a square
    load: Callable[[DataSpec, Preprocessing], dict[str, ImageClasses]]
    rotations: bool = False  # each training class's 90/180/270-degree rotations are classes too (Omniglot)


#: The one table of image datasets (``sinusoid``, the regression tasks, has no images).
IMAGE_DATASETS = {
    "omniglot": ImageDataset(28, 1, True, "pad", _omniglot, rotations=True),
    "omniglot-subset": ImageDataset(28, 1, True, "pad", _omniglot, rotations=True),
    "tiny-imagenet": ImageDataset(32, 3, False, "squash", _tiny_imagenet),
    "cifar-fs": ImageDataset(32, 3, False, "squash", _cifar_fs),
    "mini-imagenet": ImageDataset(84, 3, False, "squash", _mini_imagenet),
    "folder": ImageDataset(84, 3, False, "squash", _folder),
}


def _clinc150(spec: DataSpec) -> dict[str, TextClasses]:
    # 150 intents -> 93 train / 19 validation / 38 test, shuffled by the split seed
    root = spec.data_root or default_data_root() / "text" / "clinc150"
    return split_by_group(load_clinc150(root, spec.images_per_class), spec.split_seed)


def arsc_root(data_root: Path | None) -> Path:
    """ARSC's folder: ``data_root`` if given, else ``text/arsc`` in the default data root."""
    return data_root or default_data_root() / "text" / "arsc"


def _arsc(spec: DataSpec) -> dict[str, TextClasses]:
    if spec.split_seed != 0:
        raise ValueError("ARSC's split is fixed (its four test domains): drop --split-seed")
    return load_arsc(arsc_root(spec.data_root), spec.images_per_class)


#: The text datasets: each loads its splits; ``within_group`` episodes draw all classes from one group.
TEXT_DATASETS = {"clinc150": (_clinc150, False), "arsc": (_arsc, True)}
#: Every dataset name a recipe may record.
DATASETS = (*IMAGE_DATASETS, *TEXT_DATASETS, "sinusoid")


@dataclass(frozen=True)
class DataSpec:
    """Which data, where, and at which image size (``None``: the dataset's standard)."""

    dataset: str = setting(help="the dataset (folder: one sub-folder of images per class under --data-root)",
                           choices=DATASETS, group="data")
    data_root: Path | None = setting(
        None, "the dataset's folder (default: omniglot/images_background (omniglot-subset: "
              "omniglot/images_background_subset), tiny-imagenet/, cifar100/, mini-imagenet/, text/clinc150/ or "
              "text/arsc/ in "
              "$FEWSHOT_SERVE_DATA, else in the shared/datasets folder beside this checkout)", group="data")
    download: bool = setting(False, "download Omniglot's background set / CIFAR-100 with torchvision", group="data")
    image_size: int | None = setting(None, "input side in pixels (default: the dataset's)", group="data")
    channels: int | None = setting(None, "1 (grayscale) or 3 (colour) (default: the dataset's)", choices=(1, 3),
                                   group="data")
    split_seed: int = setting(0, "seed of the train/val/test class split", group="data")
    images_per_class: int | None = setting(
        None, "decode only each class's first N images by file name (Omniglot, Tiny ImageNet, folder; e.g. to fit "
              "Tiny ImageNet at an ImageNet backbone's 224x224 in memory), or keep its first N texts (CLINC150, ARSC)",
        metavar="N", group="data")


def image_dataset(name: str) -> ImageDataset:
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return IMAGE_DATASETS[name]


def standard_preprocessing(spec: DataSpec) -> Preprocessing | None:
    """The dataset's preprocessing before mean/std are measured on its training split."""
    if spec.dataset == "sinusoid":
        return None
    if spec.dataset in TEXT_DATASETS:
        raise ValueError(f"{spec.dataset} is text: meta-learn on an imported encoder, --init FILE from "
                         "`fewshot-serve import-text-encoder`, with --freeze-body")
    dataset = image_dataset(spec.dataset)
    size = spec.image_size or dataset.image_size
    channels = spec.channels or dataset.channels
    return Preprocessing(size, channels, dataset.invert, dataset.fit, (0.0,) * channels, (1.0,) * channels)


def standard_network(
    spec: DataSpec,
    preprocessing: Preprocessing | None,
    norm_states: int = 0,
    lr_steps: int = 0,
    architecture: str | None = None,
    widths: tuple[int, ...] | None = None,
    adapt_from: int = 0,
) -> MetaNetwork:
    """The network for ``spec``: the MLP for sinusoids; else Conv4 (the default; 64 filters for
    grayscale characters, 32 for colour) or ResNet-12 (support norm; ``widths`` default to the
    literature's). ``norm_states`` and ``lr_steps`` add MAML++'s per-step norm weights and learned
    learning rates; ``adapt_from`` is ResNet-12's first adapted block.
    """
    if preprocessing is None:
        return SinusoidMLP(lr_steps=lr_steps)
    if (architecture or "conv4") == "conv4":
        filters = (widths or (64 if preprocessing.channels == 1 else 32,))[0]
        return Conv4(preprocessing.channels, filters, preprocessing.image_size, norm_states, lr_steps)
    if architecture != "resnet12":
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    if norm_states:
        raise ValueError("per-step norms (MAML++) are implemented for conv4 only")
    return ResNet12(preprocessing.channels, widths or RESNET12_WIDTHS, preprocessing.image_size,
                    adapt_from=adapt_from, lr_steps=lr_steps)


def load_splits(spec: DataSpec, preprocessing: Preprocessing | None) -> dict[str, ImageClasses | TextClasses]:
    """Decode the dataset (texts are kept as text) and split its classes into disjoint train/val/test sets."""
    if spec.dataset == "sinusoid":
        raise ValueError("dataset 'sinusoid' has no image classes")
    if spec.dataset in TEXT_DATASETS:
        return TEXT_DATASETS[spec.dataset][0](spec)
    return image_dataset(spec.dataset).load(spec, preprocessing)


def measured_preprocessing(preprocessing: Preprocessing, train: ImageClasses) -> Preprocessing:
    """``preprocessing`` with mean/std measured on the training images (stored in the recipe)."""
    pixels = train.images.float().div_(255.0).transpose(0, 1).flatten(1)
    mean = tuple(round(float(v), 6) for v in pixels.mean(1))
    std = tuple(round(max(float(v), 1e-3), 6) for v in pixels.std(1))
    return replace(preprocessing, mean=mean, std=std)


def task_sampler(
    spec: DataSpec,
    split: ImageClasses | TextClasses | None,
    preprocessing: Preprocessing | None,
    ways: int,
    shots: int,
    queries: int,
    augment: bool,
) -> ImageEpisodes | SinusoidTasks:
    """The sampler for one split; training classes (``augment``) get Omniglot's rotations as new
    classes, or for colour photos random crops, flips and colour jitter."""
    if spec.dataset == "sinusoid":
        return SinusoidTasks(shots, queries)
    if spec.dataset in TEXT_DATASETS:  # drawn as indices into the frozen-body cache
        return ImageEpisodes(split, None, ways, shots, queries, within_group=TEXT_DATASETS[spec.dataset][1])
    assert split is not None and preprocessing is not None
    photos = augment and preprocessing.channels == 3
    rotate = augment and image_dataset(spec.dataset).rotations
    return ImageEpisodes(split, preprocessing, ways, shots, queries, rotate=rotate,
                         augment=augment_photos if photos else None)
