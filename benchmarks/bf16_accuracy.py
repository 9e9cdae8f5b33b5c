"""Does bfloat16 classification (``load(..., bf16=True)``) cost accuracy? Measured on held-out episodes.

    python benchmarks/bf16_accuracy.py models/photos-resnet12.safetensors --ways 5 --shots 5
    python benchmarks/bf16_accuracy.py models/omniglot-conv4.safetensors --ways 20 --shots 1

Each episode of the model's own test split (the dataset and split seed in its recipe) is adapted
once through the serving API, in float32; its queries are then classified twice by the same
adapted classifier, in float32 and under bfloat16 autocast. Prints both accuracies, their paired
difference with a 95% interval, how often the two predicted classes differ, and the p50 time of
classifying the queries each way, and writes JSON. The project keeps bf16 opt-in and reports it
only where the difference stays within 0.2 points.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import fewshot_serve
from fewshot_serve.data.episodes import ImageEpisodes
from fewshot_serve.data.sources import DataSpec, load_splits
from fewshot_serve.files.atomic import atomic_write_json
from fewshot_serve.training.evaluation import EvaluationResult, paired_difference

ROOT = Path(__file__).resolve().parents[1]


def run(model_path: Path, ways: int, shots: int, episodes: int, queries: int = 15, data_root: Path | None = None,
        seed: int = 0) -> dict:
    model = fewshot_serve.load(model_path, device="cpu", bf16=True)
    if not model.bf16:
        raise SystemExit("this CPU has no native bfloat16 (AVX512-BF16 / AMX): nothing to measure")
    recipe, preprocessing = model.recipe, model.preprocessing
    test = load_splits(DataSpec(recipe.dataset, data_root, split_seed=recipe.split_seed), preprocessing)["test"]
    sampler = ImageEpisodes(test, preprocessing, ways, shots, queries)
    generator = torch.Generator().manual_seed(seed)
    scores: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    disagreements, seconds = 0, {"float32": [], "bfloat16": []}
    for _ in tqdm(range(episodes), desc=f"{model_path.name} {ways}-way {shots}-shot"):
        batch = sampler.sample(generator, 1, "cpu")
        adapted = model.adapt_tensors(batch.x_support[0], batch.y_support[0], ways)
        predictions = {}
        for precision in ("float32", "bfloat16"):
            model.bf16 = precision == "bfloat16"
            started = time.perf_counter()
            predictions[precision] = adapted.probabilities(batch.x_query[0]).argmax(1)
            seconds[precision].append(time.perf_counter() - started)
            scores[precision].append((predictions[precision] == batch.y_query[0]).float().mean().item())
        disagreements += int((predictions["float32"] != predictions["bfloat16"]).sum())
    summary = {name: EvaluationResult.of_scores("accuracy", values) for name, values in scores.items()}
    summary["difference"] = paired_difference(summary["float32"], summary["bfloat16"])
    return {
        "model": model_path.name, "setting": f"{ways}-way {shots}-shot", "episodes": episodes, "queries": queries,
        "threads": torch.get_num_threads(),
        **{name: {"mean": result.mean, "ci95": result.ci95} for name, result in summary.items()},
        "disagreeing_predictions": disagreements, "predictions": episodes * ways * queries,
        "classify_p50_ms": {name: 1e3 * statistics.median(values) for name, values in seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: benchmarks/results/bf16_<model>_<setting>.json)")
    args = parser.parse_args()
    report = run(args.model, args.ways, args.shots, args.episodes, data_root=args.data_root)
    for name in ("float32", "bfloat16", "difference"):
        print(f"{name:10s} {100 * report[name]['mean']:6.2f} ± {100 * report[name]['ci95']:.2f}")
    print(f"predictions that differ: {report['disagreeing_predictions']} of {report['predictions']}")
    times = report["classify_p50_ms"]
    print(f"classifying {report['queries'] * args.ways} queries, p50: float32 {times['float32']:.1f} ms, "
          f"bfloat16 {times['bfloat16']:.1f} ms ({times['float32'] / times['bfloat16']:.2f}x)")
    out = args.out or ROOT / "benchmarks" / "results" / f"bf16_{args.model.stem}_{args.ways}x{args.shots}.json"
    atomic_write_json(out, report)


if __name__ == "__main__":
    main()
