"""Cheap levers on Lite0's frozen features, by nearest class mean on a validation set (models/experiments.md).

    python models/probe_lite0_features.py models/photos-efficientnet-lite0.safetensors DIR [--episodes 600]

DIR is a class-per-folder tree (``cross-domain/cub50`` or ``dtd10``). Every image's pooled output
of every unit (the stem, the 16 blocks, the head convolution) is computed once, plain and
mirrored; then each variant classifies the same 5-way 1- and 5-shot episodes (seed 0, 15 queries
a class) by the nearest class mean of its features, paired against the head's features as served:

* ``power 0.5`` / ``0.7``: the features raised to that power before unit length (Hu et al. 2021);
* ``mirrored support`` / ``mirrored both``: each support (and query) feature averaged with its mirror image's;
* ``head + blocks B@W``: the head's unit features beside those of blocks B (stage ends), each scaled by W.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot_serve.data.datasets import load_folder_tree
from fewshot_serve.files.model_file import load_model

HEAD = 17  # the head convolution's unit: its pooled output is the frozen part's, as served
VARIANTS = {  # name: (((unit, weight), ...), power, mirrored support, mirrored queries)
    "as served": (((HEAD, 1.0),), 1.0, False, False),
    "power 0.5": (((HEAD, 1.0),), 0.5, False, False),
    "power 0.7": (((HEAD, 1.0),), 0.7, False, False),
    "mirrored support": (((HEAD, 1.0),), 1.0, True, False),
    "mirrored both": (((HEAD, 1.0),), 1.0, True, True),
    **{f"head + blocks 16,15,11@{w}": (((HEAD, 1.0), (16, w), (15, w), (11, w)), 1.0, False, False)
       for w in (0.35, 0.5, 1.0)},
    **{f"head + block 16@{w}": (((HEAD, 1.0), (16, w)), 1.0, False, False) for w in (0.35, 0.5, 1.0)},
}


@torch.no_grad()
def pooled_units(network, images: torch.Tensor, normalize) -> list[torch.Tensor]:
    """Every unit's global-average-pooled output for ``images``, in batches."""
    params = network.at_step(dict(network.named_parameters()), 0)
    tables: list[list[torch.Tensor]] = [[] for _ in range(network.head_only_adapt_from)]
    for start in range(0, len(images), 16):
        h = normalize(images[start : start + 16])
        for unit in range(network.head_only_adapt_from):
            h = network._units(params, h, range(unit, unit + 1))
            tables[unit].append(h.mean((2, 3)))
    return [torch.cat(table) for table in tables]


def features(tables: list[torch.Tensor], units, power: float) -> torch.Tensor:
    return torch.cat([w * F.normalize(tables[u].clamp_min(0) ** power if power != 1 else tables[u], dim=1)
                      for u, w in units], 1)


def episodes(offsets: list[int], ways: int, shots: int, count: int, queries: int = 15):
    generator = torch.Generator().manual_seed(0)
    for _ in range(count):
        chosen = torch.randperm(len(offsets) - 1, generator=generator)[:ways].tolist()
        yield torch.stack([offsets[c] + torch.randperm(offsets[c + 1] - offsets[c], generator=generator)
                           [:shots + queries] for c in chosen])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--episodes", type=int, default=600)
    args = parser.parse_args()
    network, recipe = load_model(args.model)
    preprocessing = recipe.image_preprocessing()
    classes = load_folder_tree(args.folder, preprocessing)
    plain = pooled_units(network, classes.images, preprocessing.normalize)
    mirrored = pooled_units(network, classes.images.flip(-1), preprocessing.normalize)
    offsets = classes.offsets.tolist() if torch.is_tensor(classes.offsets) else list(classes.offsets)
    for shots in (1, 5):
        scores: dict[str, list[float]] = {name: [] for name in VARIANTS}
        tables = {name: (features(plain, units, power), features(mirrored, units, power))
                  for name, (units, power, _, _) in VARIANTS.items()}
        truth = torch.arange(5).repeat_interleave(15)
        for picks in episodes(offsets, 5, shots, args.episodes):
            support, query = picks[:, :shots].reshape(-1), picks[:, shots:].reshape(-1)
            for name, (_, _, mirror_support, mirror_query) in VARIANTS.items():
                table, mirror = tables[name]
                s = (table[support] + mirror[support]) / 2 if mirror_support else table[support]
                q = (table[query] + mirror[query]) / 2 if mirror_query else table[query]
                predicted = torch.cdist(q, s.view(5, shots, -1).mean(1)).argmin(1)
                scores[name].append((predicted == truth).float().mean().item())
        base = torch.tensor(scores["as served"])
        print(f"5-way {shots}-shot on {args.folder.name}, {args.episodes} episodes:")
        for name, values in scores.items():
            values = torch.tensor(values)
            difference = values - base
            print(f"  {name:28s} {100 * values.mean():6.2f}%  paired {100 * difference.mean():+.2f} ± "
                  f"{196 * difference.std() / math.sqrt(len(values)):.2f}")


if __name__ == "__main__":
    main()
