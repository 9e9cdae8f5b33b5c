""""None of these": how far a query lies from every class of its task, and when that is too far.

The score is the distance from a query's features (the head's input: unit length, as the
adapted head sees them) to the nearest class mean of the support set's features. Chosen on the
photo model's validation sets (``cross-domain/cub50`` and ``dtd10``, 5-way, queries of five
other classes against the task's own): its AUROC was 0.83 and 0.82 at 5 shots, 0.75 and 0.72 at
one, ahead of one minus the top probability (0.79 / 0.79 and 0.71 / 0.69), the negative
log-sum-exp of the logits and the distance to the nearest support image; dividing it by the
support set's own spread made it worse. A distance needs no softmax temperature, so one
threshold means the same for 2 classes as for 20.

The threshold is calibrated on training classes (:mod:`fewshot_serve.training.unknown_calibration`)
for a stated share of wrongly rejected in-task queries, once per shot count, since one image a
class puts its mean farther from its own queries than five do; a support set with other counts
reads the threshold off the line between the calibrated ones. Meta-training and serving both
import this module, so the score calibrated is the score served.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .calibration import per_shot_count
from .networks.base import class_mean_features

#: What the recipe's ``unknown_calibration["score"]`` names; a file calibrated for another score is refused.
SCORE = "distance to the nearest class mean"


def unknown_scores(features: Tensor, support_targets: Tensor, ways: int) -> Tensor:
    """Each query's distance to the nearest class mean (``[n_query]``; larger: less like any class).

    ``features``: the head's input for the support images, then the queries, from one
    :meth:`~fewshot_serve.networks.MetaNetwork.head_input` call with the support as ``n_ref``, so that a
    network normalizing with the support set's statistics sees the queries as it does when it
    classifies them.
    """
    n_support = len(support_targets)
    means = class_mean_features(features[:n_support], support_targets, ways)
    return torch.cdist(features[n_support:], means).min(1).values


def threshold_for(calibration: Mapping[str, Any], shots: int) -> float:
    """The calibrated threshold for a support set whose smallest class has ``shots`` images:
    linear between the calibrated shot counts, the nearest one's beyond them."""
    return per_shot_count(calibration["thresholds"], shots)


def calibration_problems(calibration: Mapping[str, Any]) -> list[str]:
    """What is wrong with a recipe's ``unknown_calibration`` (empty: nothing, or no calibration)."""
    if not isinstance(calibration, Mapping):
        return [f"unknown_calibration must be a JSON object, got {type(calibration).__name__}"]
    if not calibration:
        return []
    if calibration.get("score") != SCORE:
        return [f"unknown_calibration's score must be {SCORE!r}, got {calibration.get('score')!r}"]
    thresholds = calibration.get("thresholds")
    if not isinstance(thresholds, Mapping) or not thresholds:
        return ["unknown_calibration needs thresholds {shots: distance}"]
    problems = []
    for shots, value in thresholds.items():
        if not str(shots).isdigit() or int(shots) < 1:
            problems.append(f"unknown_calibration's shot count {shots!r} is not a positive integer")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            problems.append(f"unknown_calibration's threshold for {shots} shots must be a distance >= 0, got {value!r}")
    rate = calibration.get("false_rejection")
    if not isinstance(rate, (int, float)) or not 0 < rate < 1:
        problems.append(f"unknown_calibration's false_rejection must be in (0, 1), got {rate!r}")
    return problems
