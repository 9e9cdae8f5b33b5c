"""Evaluate meta-trained Omniglot models side by side on the held-out alphabets.

    python models/compare_omniglot.py runs/omniglot-maml.safetensors runs/omniglot-fomaml.safetensors ...

For each model: accuracy in each ``--settings`` (default 5-way 1-shot; mean ± 95% CI over 600
episodes of the test split, 15 queries per class, at the file's test-time step count), and 5-way
1-shot accuracy against the number of adaptation steps. Every model is scored on the very same
episodes. Results are keyed by ``--names`` (default: the algorithm) and merged into
``<output>.json`` next to this script, so models evaluated in separate runs share one table;
``<output>.png`` plots accuracy against steps for every model in it. ``--output`` defaults to
``omniglot-comparison`` (and the plot to ``omniglot-accuracy-vs-steps.png``, as published).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.atomic import atomic_output, atomic_write_json
from fewshot_serve.files.model_file import load_model
from fewshot_serve.training.evaluation import evaluate_episodes

STEP_COUNTS = (0, 1, 2, 3, 5, 10, 20)
HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--settings", nargs="+", default=["5x1"], help="WAYSxSHOTS, e.g. 5x1 5x5 20x1")
    parser.add_argument("--curve-episodes", type=int, default=100)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--names", nargs="+", default=None, help="one label per model (default: its algorithm)")
    parser.add_argument("--output", default=None, help="base name of the JSON and PNG (default: the published ones)")
    args = parser.parse_args()
    if args.names is not None and len(args.names) != len(args.models):
        parser.error("give one --names label per model")
    json_path = HERE / f"{args.output or 'omniglot-comparison'}.json"
    png_path = HERE / (f"{args.output}.png" if args.output else "omniglot-accuracy-vs-steps.png")
    device = torch.device("cpu")
    splits = None
    for index, path in enumerate(args.models):
        network, recipe = load_model(path, device)
        preprocessing = recipe.image_preprocessing()
        if splits is None:
            # the set the model was trained beside (omniglot or omniglot-subset), so its test alphabets
            splits = load_splits(DataSpec(recipe.dataset, args.data_root, split_seed=recipe.split_seed), preprocessing)
        lrs = tuple(recipe.inner_lrs)
        entry = {"file": path.name, "algorithm": recipe.algorithm, "test_steps": recipe.test_steps,
                 "test_alphabets": sorted(set(splits["test"].groups))}
        for ways, shots in (map(int, setting.split("x")) for setting in args.settings):
            sampler = ImageEpisodes(splits["test"], preprocessing, ways, shots, queries=15)
            result = evaluate_episodes(network, sampler, lrs, recipe.test_steps, args.episodes, seed=0, device=device)
            entry[f"{ways}-way {shots}-shot"] = {"accuracy": result.mean, "ci95": result.ci95}
            print(f"{path.name} {ways:2d}-way {shots}-shot: {100 * result.mean:.2f} ± {100 * result.ci95:.2f}%")
        sampler = ImageEpisodes(splits["test"], preprocessing, 5, 1, queries=15)
        entry["5-way 1-shot by steps"] = {
            str(steps): evaluate_episodes(network, sampler, lrs, steps, args.curve_episodes, seed=1, device=device).mean
            for steps in STEP_COUNTS
        }
        # re-read before writing: another evaluation may have added its model meanwhile
        results = json.loads(json_path.read_text()) if json_path.exists() else {}
        results[args.names[index] if args.names else recipe.algorithm] = entry
        atomic_write_json(json_path, results)
    plot(results, png_path)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.4))
    for name, entry in results.items():
        curve = entry["5-way 1-shot by steps"]
        axis.plot([int(k) for k in curve], [100 * v for v in curve.values()], marker="o", label=name)
    axis.set_xlabel("adaptation steps at test time")
    axis.set_ylabel("5-way 1-shot accuracy (%)")
    axis.set_title("Omniglot, held-out alphabets")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)


if __name__ == "__main__":
    main()
