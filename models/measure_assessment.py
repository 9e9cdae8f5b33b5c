"""How far the trust features can be trusted: the cards' figures for the accuracy estimate and "none of these".

    python models/measure_assessment.py MODEL [--dataset folder --data-root DIR --split all] \
        [--settings 5x5 20x5] [--episodes 600] [--rejection] --output results/trust-MODEL.json

On each episode of the scored classes (seed 0, 15 queries a class, the episodes compare_photos.py
draws): adapt to the support with the file's inner loop, estimate from the support alone (one
image of each class held out at a time, the same inner loop), and score the queries. Prints and
writes, per setting: the mean estimate and query accuracy, the estimate's mean signed and absolute error against the
query accuracy, and the share of episodes whose query accuracy lies inside the stated 90%
interval. Settings with one shot have no estimate (nothing can be held out) and are skipped.

``--rejection`` also scores "none of these" (``predict(..., reject_unknown=True)``): each episode
draws twice the classes, adapts to the first half's support and scores the queries of all, so the
second half's are out-of-task; it prints the AUROC of out-of-task against in-task queries (pooled
over episodes, and the mean of each episode's) and, at the file's calibrated threshold, the share
of out-of-task queries accepted and of in-task queries rejected.
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
from fewshot_serve.serving.assessment import Z_90, wilson_interval
from fewshot_serve.training.frozen_body import CachedEpisodes
from fewshot_serve.training.unknown_calibration import ScoredEpisodes
from fewshot_serve.unknown import threshold_for


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


#: Widenings of the 90% Wilson interval's z whose coverage is reported (the served one: assessment.INTERVAL_WIDENING).
WIDENINGS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)


def measure(model: FewShotModel, sampler: CachedEpisodes, ways: int, episodes: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    accuracies, estimates, inside, counts = [], [], 0, []
    for _ in range(episodes):
        accuracy, assessment = episode(model, sampler.sample(generator, 1, "cpu"), ways)
        low, high = assessment.interval
        accuracies.append(accuracy)
        estimates.append(assessment.accuracy)
        counts.append((round(assessment.accuracy * assessment.held_out), assessment.held_out))
        inside += low <= accuracy <= high
    errors = torch.tensor(estimates) - torch.tensor(accuracies)
    by_widening = {}
    for widening in WIDENINGS:  # how often the interval at z times this would have held the query accuracy
        bounds = [wilson_interval(correct, total, Z_90 * widening) for correct, total in counts]
        by_widening[str(widening)] = sum(low <= a <= high for (low, high), a in zip(bounds, accuracies)) / episodes
    return {"episodes": episodes, "mean_query_accuracy": sum(accuracies) / episodes,
            "mean_estimate": sum(estimates) / episodes, "mean_signed_error": errors.mean().item(),
            "mean_absolute_error": errors.abs().mean().item(), "interval_holds_accuracy": inside / episodes,
            "interval_holds_accuracy_by_widening": by_widening}


def auroc(out_of_task: torch.Tensor, in_task: torch.Tensor) -> float:
    """The chance that an out-of-task query scores above an in-task one (ties counted half), from ranks
    (Mann-Whitney): pooled over 600 episodes, all pairs would be 2 billion comparisons."""
    _, where, counts = torch.unique(torch.cat([out_of_task, in_task]).double(), return_inverse=True,
                                         return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts - 1) / 2)[where]  # tied scores share their average rank
    n_out, n_in = len(out_of_task), len(in_task)
    return ((ranks[:n_out].sum() - n_out * (n_out + 1) / 2) / (n_out * n_in)).item()


def measure_rejection(scored: ScoredEpisodes, ways: int, episodes: int, threshold: float | None) -> dict:
    generator = torch.Generator().manual_seed(0)
    pooled: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    per_episode = []
    for _ in range(episodes):
        scores, in_task = scored.scores(scored.sample(generator), task_labels=ways)
        pooled[True].append(scores[in_task])
        pooled[False].append(scores[~in_task])
        per_episode.append(auroc(scores[~in_task], scores[in_task]))
    inside, outside = torch.cat(pooled[True]), torch.cat(pooled[False])
    result = {"episodes": episodes, "auroc": auroc(outside, inside), "mean_episode_auroc": sum(per_episode) / episodes}
    if threshold is not None:
        result |= {"threshold": threshold, "false_acceptance": (outside <= threshold).double().mean().item(),
                   "false_rejection": (inside > threshold).double().mean().item()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--settings", nargs="+", default=["5x5"], help="WAYSxSHOTS with 2 or more shots")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--dataset", default=None, help="default: the model's own, its --split classes")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--split", choices=("test", "val", "all"), default="test")
    parser.add_argument("--images-per-class", type=int, default=None)
    parser.add_argument("--rejection", action="store_true", help="also measure 'none of these'")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    settings = [tuple(map(int, setting.split("x"))) for setting in args.settings]
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
    calibration = recipe.unknown_calibration
    for ways, shots in settings:
        setting, report_entry = f"{ways}-way {shots}-shot", {}
        if shots > 1:  # a 1-shot support set has no estimate: nothing can be held out
            sampler = CachedEpisodes(ImageEpisodes(classes, preprocessing, ways, shots, queries=15), table)
            report_entry["assessment"] = measure(model, sampler, ways, args.episodes)
        if args.rejection:
            scored = ScoredEpisodes(network, recipe, classes, preprocessing, table, 2 * ways, shots, 15)
            threshold = threshold_for(calibration, shots) if calibration else None
            report_entry["rejection"] = measure_rejection(scored, ways, args.episodes, threshold)
        report[setting] = report_entry
        for part, result in report_entry.items():
            print(f"{setting} {part}: " + json.dumps(result), flush=True)
    atomic_write_json(args.output, report)


if __name__ == "__main__":
    main()
