"""How honest a model file's probabilities are on held-out classes: the cards' calibration figures.

    python models/measure_calibration.py MODEL [--split test] [--folder DIR ...] [--settings 5x1 5x5] \
        [--episodes 600] --output models/results/calibration-NAME.json --diagram models/calibration-NAME.png

On each episode (seed 0, 15 queries a class), adapt to the support with the file's inner loop as
serving does and classify the queries; per setting and source, print and write the accuracy, the
mean top probability, the expected calibration error (15 equal-width bins), the share of right
answers under one half, and how often answers marked "unsure" and unmarked ones are wrong, both
without calibration (temperature 1, "unsure" under one half) and with the file's calibration. The
diagram plots accuracy against mean top probability per bin, before and after, one panel per
setting and source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fewshot_serve.calibration import (  # noqa: E402
    DEFAULT_UNSURE_BELOW,
    CalibratedSoftmax,
    temperature_for,
    unsure_below,
)
from fewshot_serve.files.atomic import atomic_output, atomic_write_json  # noqa: E402
from fewshot_serve.files.model_file import load_model  # noqa: E402
from fewshot_serve.training.probability_calibration import (  # noqa: E402
    calibration_report,
    episode_sources,
    reliability,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--split", choices=("test", "val", "none"), default="test")
    parser.add_argument("--folder", type=Path, action="append", default=[])
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--images-per-class", type=int, default=None)
    parser.add_argument("--settings", nargs="+", default=["5x1", "5x5"], help="WAYSxSHOTS")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--diagram", type=Path, required=True)
    args = parser.parse_args()
    network, recipe = load_model(args.model)
    calibration = recipe.probability_calibration
    settings = [tuple(map(int, setting.split("x"))) for setting in args.settings]
    report = {"model": args.model.name, "calibration": calibration, "results": {}}
    panels = []
    sources = episode_sources(network, recipe, None if args.split == "none" else args.split, args.folder,
                              args.data_root, args.images_per_class)
    for source in sources:
        for ways, shots in settings:
            logits, targets = source.query_logits(recipe, ways, shots, args.episodes)
            after_t, after_level = temperature_for(calibration, shots), unsure_below(calibration)
            entry = {"before": calibration_report(logits, targets, 1.0, DEFAULT_UNSURE_BELOW),
                     "after": calibration_report(logits, targets, after_t, after_level)}
            name = f"{source.name} {ways}-way {shots}-shot"
            report["results"][name] = entry
            print(name + ": " + json.dumps(entry), flush=True)
            panels.append((name, reliability(CalibratedSoftmax(1.0)(logits), targets),
                           reliability(CalibratedSoftmax(after_t)(logits), targets), entry))
    atomic_write_json(args.output, report)
    draw(panels, args.model.stem, args.diagram)


def draw(panels: list, title: str, path: Path) -> None:
    """Reliability diagrams: accuracy against mean top probability per bin, before and after calibration."""
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for axis, (name, before, after, entry) in zip(axes[0], panels):
        axis.plot([0, 1], [0, 1], color="0.7", linewidth=1)
        for rows, label, colour in ((before, "before", "tab:red"), (after, "after", "tab:blue")):
            ece = entry[label]["ece"]
            axis.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o-", color=colour,
                      markersize=3, label=f"{label} (ECE {ece:.3f})")
        axis.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean top probability", title=name)
        axis.title.set_fontsize(8)
        axis.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("accuracy")
    figure.suptitle(f"{title}: reliability on held-out classes", fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    main()
