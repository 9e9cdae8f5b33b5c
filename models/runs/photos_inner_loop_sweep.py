"""Pick the head-only inner loop (learning rate, steps) for a pretrained backbone, on VALIDATION classes.

    python models/runs/photos_inner_loop_sweep.py runs/photos-pretrained.safetensors [--trained A B ...]

Written for the photo backbone, and used as is for the handwriting one (``--ways 20``). Scores
``--ways``-way 1-shot and 5-shot on the validation split (200 episodes each) for a grid of fixed
learning rates and step counts, from the frozen backbone's features cached once per image. The
chosen values start meta-learning (`train --inner-lr`), and score "pretrained, inner loop without
meta-learning" in the model card. ``--trained FILE...`` also scores meta-learned files (made from
this backbone with ``--freeze-body``, so they share its cached features) at their own recipes.
Test classes are never touched here.
"""

import argparse
from pathlib import Path

import torch

from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.evaluation import evaluate_episodes
from fewshot_serve.training.frozen_body import AdaptedPart, CachedEpisodes, cache_frozen_part

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model", type=Path)
parser.add_argument("--lrs", type=float, nargs="*", default=[0.5, 1, 2, 4, 8, 16], help="none: skip the grid")
parser.add_argument("--steps", type=int, nargs="+", default=[1, 5, 10, 20])
parser.add_argument("--episodes", type=int, default=200)
parser.add_argument("--ways", type=int, default=5)
parser.add_argument("--data-root", type=Path, default=None)
parser.add_argument("--trained", type=Path, nargs="*", default=[])
args = parser.parse_args()

device = torch.device("cpu")
network, recipe = load_model(args.model)
preprocessing = recipe.image_preprocessing()
val = load_splits(DataSpec(recipe.dataset, args.data_root, split_seed=recipe.split_seed), preprocessing)["val"]
table = cache_frozen_part(network, val, preprocessing, device)
part = AdaptedPart(network)
for shots in (1, 5):
    sampler = CachedEpisodes(ImageEpisodes(val, preprocessing, args.ways, shots, 15), table)
    for lr in args.lrs:
        scores = [evaluate_episodes(part, sampler, (lr,), steps, args.episodes, seed=1234, device=device).mean
                  for steps in args.steps]
        by_steps = "  ".join(f"{s} steps {100 * v:.2f}%" for s, v in zip(args.steps, scores))
        print(f"{args.ways}-way {shots}-shot lr {lr:5.1f}: {by_steps}", flush=True)
for path in args.trained:
    trained, trained_recipe = load_model(path)
    scores = []
    for shots in (1, 5):
        sampler = CachedEpisodes(ImageEpisodes(val, preprocessing, args.ways, shots, 15), table)
        scores.append(evaluate_episodes(AdaptedPart(trained), sampler, tuple(trained_recipe.inner_lrs),
                                        trained_recipe.test_steps, args.episodes, seed=1234, device=device).mean)
    print(f"{path.name}: {args.ways}-way 1-shot {100 * scores[0]:.2f}%  5-shot {100 * scores[1]:.2f}%", flush=True)
