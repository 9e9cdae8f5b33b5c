"""A run's log and curves, shared by every training stage (meta-training, pretraining).

``log.jsonl`` holds one record per iteration (``loss``, ``metric``) and per validation
(``val_metric``, ``val_ci95``); ``curves.png`` plots them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..files.atomic import atomic_output


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (none if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log: list[dict[str, Any]], path: Path, metric: str) -> None:
    """Training loss and training/validation metric against iterations, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in log if "loss" in r]
    vals = [r for r in log if "val_metric" in r]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        window = max(1, len(steps) // 50)
        xs = [r["iteration"] for r in steps]
        for axis, key, label in ((left, "loss", "query loss"), (right, "metric", f"train {metric}")):
            values = torch.tensor([r[key] for r in steps], dtype=torch.float64)
            smooth = torch.nn.functional.avg_pool1d(values.view(1, 1, -1), window, 1).flatten().tolist()
            axis.plot(xs[window - 1 :], smooth, label=label)
    if vals:
        right.errorbar([r["iteration"] for r in vals], [r["val_metric"] for r in vals],
                       yerr=[r["val_ci95"] for r in vals], marker="o", label=f"validation {metric}")
    for axis, title in ((left, "meta-training loss"), (right, metric)):
        axis.set_xlabel("iteration")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=90)
    plt.close(figure)
