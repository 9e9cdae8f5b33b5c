"""How well a classifier's own estimate (``adapted.assessment()``) predicts its accuracy: the cards' trust figures.

    python models/measure_assessment.py MODEL [--dataset folder --data-root DIR --split all] \
        [--settings 5x5 20x5] [--episodes 600] --output results/trust-MODEL.json

On each episode of the scored classes (seed 0, 15 queries a class, the episodes compare_photos.py
draws): adapt to the support with the file's inner loop, estimate from the support alone (one
image of each class held out at a time, the same inner loop), and score the queries. Prints and
writes, per setting: the mean estimate and query accuracy, the estimate's mean signed and absolute error against the
query accuracy, and the share of episodes whose query accuracy lies inside the stated 90%
interval. Settings with one shot have no estimate (nothing can be held out) and are refused.
The backbone's output is computed once per image, as serving computes it once per request.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from compare_photos import frozen_outputs  # models/ is this script's folder

from fewshot_serve.data.datasets import load_folder_tree
from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.files.model_file import load_model
from fewshot_serve.serving.api import AdaptedClassifier, FewShotModel
from fewshot_serve.training.frozen_body import CachedEpisodes


def episode(model: FewShotModel, batch, ways: int) -> tuple[float, object]:
    """The query accuracy of one adapted episode and the support set's own assessment of it."""
    h_support, y_support, h_query, y_query = batch.x_support[0], batch.y_support[0], batch.x_query[0], batch.y_query[0]
    steps = model.recipe.test_steps
    adaptation = model.adapt_features(h_support, h_support, y_support, ways, steps)
    params = {k: v.detach() for k, v in adaptation.params.items()}
    adapted = AdaptedClassifier([str(c) for c in range(ways)], model, [], 0.0, params, h_support, h_support,
                                y_support, steps)
    with torch.inference_mode():
        outputs = model.network.adapted_part(params, torch.cat([h_support, h_query]), n_ref=len(h_support))
    accuracy = (outputs[len(h_support):].argmax(1) == y_query).float().mean().item()
    return accuracy, adapted.assessment()


def measure(model: FewShotModel, sampler: CachedEpisodes, ways: int, episodes: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    accuracies, estimates, inside = [], [], 0
    for _ in range(episodes):
        accuracy, assessment = episode(model, sampler.sample(generator, 1, "cpu"), ways)
        low, high = assessment.interval
        accuracies.append(accuracy)
        estimates.append(assessment.accuracy)
        inside += low <= accuracy <= high
    errors = torch.tensor(estimates) - torch.tensor(accuracies)
    return {"episodes": episodes, "mean_query_accuracy": sum(accuracies) / episodes,
            "mean_estimate": sum(estimates) / episodes, "mean_signed_error": errors.mean().item(),
            "mean_absolute_error": errors.abs().mean().item(), "interval_holds_accuracy": inside / episodes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--settings", nargs="+", default=["5x5"], help="WAYSxSHOTS with 2 or more shots")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--dataset", default=None, help="default: the model's own, its --split classes")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--split", choices=("test", "val", "all"), default="test")
    parser.add_argument("--images-per-class", type=int, default=None)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    settings = [tuple(map(int, setting.split("x"))) for setting in args.settings]
    if any(shots < 2 for _, shots in settings):
        parser.error("a 1-shot support set has no estimate: nothing can be held out")
    network, recipe = load_model(args.model)
    preprocessing = recipe.image_preprocessing()
    if args.split == "all":
        classes = load_folder_tree(args.data_root, preprocessing, args.images_per_class)
    else:
        spec = DataSpec(args.dataset or recipe.dataset, args.data_root, split_seed=recipe.split_seed,
                        images_per_class=args.images_per_class)
        classes = load_splits(spec, preprocessing)[args.split]
    table = frozen_outputs(network, classes, preprocessing, torch.device("cpu"), [])
    if table is None:
        parser.error(f"{args.model}: only a fixed-norm file with a frozen part has a backbone to cache")
    model = FewShotModel(network, recipe, torch.device("cpu"))
    report = {"model": args.model.name, "split": args.split, "classes": classes.names}
    for ways, shots in settings:
        sampler = CachedEpisodes(ImageEpisodes(classes, preprocessing, ways, shots, queries=15), table)
        result = measure(model, sampler, ways, args.episodes)
        report[f"{ways}-way {shots}-shot"] = result
        print(f"{ways}-way {shots}-shot: " + json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)
    atomic_write_json(args.output, report)


if __name__ == "__main__":
    main()
