"""Proof that an imported backbone computes what it was trained to: its own 1000-way ImageNet classifier
on shared Tiny ImageNet photos.

    python models/prove_imagenet_port.py models/runs/lite0-224.safetensors --backbone efficientnet-lite0

Our model file holds the backbone only; the package's classifier (``_fc``) is read beside it from the
installed package (``torch.load(weights_only=True)``, as the import does) and applied to our pooled
features. Tiny ImageNet's class folders are ImageNet WordNet ids, and ImageNet's class ``i`` is the
``i``-th of the 1000 sorted ids (timm's ``imagenet_synsets.txt``, from the ``pretrained`` extra). A port
that got any name, padding, stride, epsilon or normalization wrong scores far lower. The photos are
64x64 thumbnails from ImageNet's own training set, upsampled: the figure checks the port, it is not a
measure of accuracy on new photos. Prints top-1 and top-5 and writes them as JSON with ``--output``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot_serve.data.datasets import default_data_root, load_class_files
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.files.backbone_import import CLASSIFIER_KEYS, find_weights, read_state_dict
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.frozen_body import per_image


def imagenet_wnids() -> list[str]:
    """ImageNet-1k's class ids in class-index order (timm's data file; timm's code is not imported)."""
    files = [f for f in importlib.metadata.distribution("timm").files or () if f.name == "imagenet_synsets.txt"]
    if len(files) != 1:
        raise FileNotFoundError("timm's imagenet_synsets.txt not found: pip install -e '.[pretrained]'")
    wnids = Path(files[0].locate()).read_text().split()
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise ValueError("expected ImageNet's 1000 sorted class ids")
    return wnids


def imagenet_accuracy(model_path: Path, backbone: str, data_root: Path | None = None, per_class: int = 25) -> dict:
    """Top-1 and top-5 of ``backbone``'s ImageNet classifier on the features of the imported file ``model_path``."""
    network, recipe = load_model(model_path)
    state = read_state_dict(find_weights(backbone).path)
    weight, bias = (state[key] for key in CLASSIFIER_KEYS)
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    root = (data_root or default_data_root() / "tiny-imagenet") / "images"
    if not root.is_dir():
        raise FileNotFoundError(f"Tiny ImageNet not found at {root.parent}")
    folders = sorted(d for d in root.iterdir() if d.is_dir() and d.name in index)
    classes = [(d.name, d.name, sorted(d.glob("*.JPEG"))[:per_class]) for d in folders]
    preprocessing = recipe.image_preprocessing()
    photos = load_class_files(classes, preprocessing, "Tiny ImageNet")
    params = network.at_step(dict(network.named_parameters()), 0)
    logits = per_image(lambda x: F.linear(network.embed(params, x), weight, bias), network, photos.images,
                       preprocessing.normalize, torch.device("cpu"), "ImageNet classifier")
    truth = torch.tensor([index[name] for name, count in zip(photos.names, photos.counts()) for _ in range(count)])
    top5 = logits.topk(5, dim=1).indices
    return {"model": model_path.name, "image_size": preprocessing.image_size, "classes": len(folders),
            "photos": len(truth), "top1": (top5[:, 0] == truth).float().mean().item(),
            "top5": (top5 == truth[:, None]).any(1).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a file written by `fewshot-serve import-backbone`")
    parser.add_argument("--backbone", default="efficientnet-lite0", help="whose package holds the classifier")
    parser.add_argument("--data-root", type=Path, default=None, help="default: tiny-imagenet/ in the data root")
    parser.add_argument("--per-class", type=int, default=25, help="photos per class (the first, by file name)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    result = imagenet_accuracy(args.model, args.backbone, args.data_root, args.per_class)
    print(f"{result['model']} at {result['image_size']}px on {result['photos']} Tiny ImageNet photos of "
          f"{result['classes']} classes: ImageNet top-1 {100 * result['top1']:.1f}%, top-5 {100 * result['top5']:.1f}%")
    if args.output:
        atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
