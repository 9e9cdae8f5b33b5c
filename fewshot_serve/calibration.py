"""Probabilities that mean what they say: a softmax temperature per shot count, and the "unsure" level.

Meta-learning fits the logits' scale for the inner loop's steps and the training tasks' loss, not
for the probabilities a person reads: before calibration the photo model was right on 89% of
5-way 5-shot queries of new photo collections while its mean top probability was 47%, and the
handwriting model right on 98% at 40%. Dividing the adapted classifier's logits by a temperature
fitted for log-loss on validation tasks fixes the level without changing any prediction (the
order of a row's logits is kept), so accuracy, the assessment and "none of these" (a distance,
:mod:`fewshot_serve.unknown`) are untouched. One temperature per shot count, since five images a
class make a more confident classifier than one; a support set with other counts reads the
temperature off the line between the fitted ones, as the unknown threshold does.

The recipe's ``probability_calibration`` holds the temperatures, the level below which an answer
is marked "unsure" (chosen so that marked answers are wrong often enough to be worth a second
look), and what they were fitted on (``fewshot-serve calibrate``,
:mod:`fewshot_serve.training.probability_calibration`). A file without it serves temperature 1.
Serving and meta-training both import this module, so the softmax calibrated is the softmax served.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: What the recipe's ``probability_calibration["method"]`` names.
METHOD = "temperature per shot count"
#: The "unsure" level of a file without a calibration: the top class is less likely than not.
DEFAULT_UNSURE_BELOW = 0.5


def per_shot_count(values: Mapping[str, float], shots: int) -> float:
    """A value calibrated at some shot counts (``{"1": v1, "5": v5}``) for a support set whose
    smallest class has ``shots`` examples: linear between the calibrated counts, the nearest one's beyond them."""
    points = sorted((int(k), float(v)) for k, v in values.items())
    if shots <= points[0][0]:
        return points[0][1]
    for (low, at_low), (high, at_high) in zip(points, points[1:]):
        if shots <= high:
            return at_low + (at_high - at_low) * (shots - low) / (high - low)
    return points[-1][1]


def temperature_for(calibration: Mapping[str, Any], shots: int) -> float:
    """The softmax temperature for a support set whose smallest class has ``shots`` examples (1: none calibrated)."""
    return per_shot_count(calibration["temperatures"], shots) if calibration else 1.0


def unsure_below(calibration: Mapping[str, Any]) -> float:
    """The top probability below which an answer is marked "unsure"."""
    return float(calibration.get("unsure_below", DEFAULT_UNSURE_BELOW)) if calibration else DEFAULT_UNSURE_BELOW


class CalibratedSoftmax(nn.Module):
    """Logits -> probabilities at a temperature: the last layer of every served classifier (torch and ONNX)."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"a softmax temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def forward(self, logits: Tensor) -> Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)


def calibration_problems(calibration: Mapping[str, Any]) -> list[str]:
    """What is wrong with a recipe's ``probability_calibration`` (empty: nothing, or no calibration)."""
    if not isinstance(calibration, Mapping):
        return [f"probability_calibration must be a JSON object, got {type(calibration).__name__}"]
    if not calibration:
        return []
    if calibration.get("method") != METHOD:
        return [f"probability_calibration's method must be {METHOD!r}, got {calibration.get('method')!r}"]
    temperatures = calibration.get("temperatures")
    if not isinstance(temperatures, Mapping) or not temperatures:
        return ["probability_calibration needs temperatures {shots: temperature}"]
    problems = []
    for shots, value in temperatures.items():
        if not str(shots).isdigit() or int(shots) < 1:
            problems.append(f"probability_calibration's shot count {shots!r} is not a positive integer")
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 1e-3 <= value <= 1e3:
            problems.append(f"probability_calibration's temperature for {shots} shots must be in [0.001, 1000], "
                            f"got {value!r}")
    level = calibration.get("unsure_below", DEFAULT_UNSURE_BELOW)
    if not isinstance(level, (int, float)) or not 0 <= level <= 1:
        problems.append(f"probability_calibration's unsure_below must be in [0, 1], got {level!r}")
    return problems
