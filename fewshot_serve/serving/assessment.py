"""How far to trust an adapted classifier, estimated from its support set alone.

The support set is split into folds, the k-th fold holding out the k-th image of every class
that has two or more; the model's own inner loop adapts to the rest, and the adapted classifier
predicts the held-out images. The share it gets right estimates the classifier's accuracy on
images like these; its confusions say which classes to add images to. Holding out one image of
every class at once keeps the classes as balanced as the user gave them: holding out one image
alone (leave-one-out) leaves its class one image short of the others, and on the photo model
that made the estimate 9 points too low (``models/measure_assessment.py``). It estimates a
classifier adapted to one image fewer per class, so it still leans low. A class with a single
image cannot be held out: it is named as not estimable, and when every class has one image there
is no estimate at all.

The support images' frozen part (the whole backbone, for the shipped models) is computed once, by
:meth:`FewShotModel.adapt`; each fold re-runs only the inner loop's steps on the adapted part.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: At most this many adaptations per estimate (one per image of the largest class, up to this).
MAX_FOLDS = 25
#: The interval's confidence (a Wilson score interval over the held-out predictions).
CONFIDENCE = 0.9
Z_90 = 1.6448536269514722  # the standard normal's 95th percentile: a two-sided 90% interval
#: How much wider than Wilson's 90% interval the stated one is. Wilson's is for the accuracy on
#: the held-out images' own distribution; the queries a user then classifies are another sample,
#: and the estimate is made with one image fewer per class. The widening is chosen on the photo
#: model's validation sets (models/measure_assessment.py: the smallest of its widenings whose
#: interval holds the 75 queries' accuracy in 90% of cub50's and dtd10's 5-way 5-shot episodes).
INTERVAL_WIDENING = 1.4  # cub50 90.2%, dtd10 90.7% at 5-way 5-shot (1.2: 87.3%, 87.0%)


@dataclass(frozen=True)
class Assessment:
    """The support set's own verdict on a classifier: accuracy, its interval, and the confusions."""

    labels: list[str]
    accuracy: float | None  # None: no class has two images
    interval: tuple[float, float] | None  # 90% Wilson score interval of ``accuracy``
    per_class: dict[str, float | None]  # None: the class has a single image (not estimable)
    confusion: list[list[int]]  # [true class][predicted class] counts over the held-out images
    held_out: int  # held-out predictions the estimate rests on
    folds: int  # adaptations run
    seconds: float
    noun: str = "image"  # what the examples are, for the summary: "image" or "text"

    @property
    def not_estimable(self) -> list[str]:
        return [label for label, value in self.per_class.items() if value is None]

    def confused_pairs(self, top: int = 3) -> list[tuple[str, str, int]]:
        """The most frequent (true, predicted, count) mistakes, most frequent first."""
        pairs = [(self.labels[t], self.labels[p], count) for t, row in enumerate(self.confusion)
                 for p, count in enumerate(row) if t != p and count]
        return sorted(pairs, key=lambda pair: -pair[2])[:top]

    def summary(self) -> str:
        """A few sentences for a person: the range the accuracy likely lies in, what it rests on, and what to add.

        A range, not "about x% ± m": the interval is lopsided near 100% ([0.79, 1.0] read as "100% ± 10"
        promised more than the queries then scored), and its two ends are what a reader can act on.
        """
        if self.accuracy is None:
            return (f"No estimate: every class has a single {self.noun}; add a second {self.noun} to a class "
                    "to estimate accuracy.")
        low, high = (round(100 * bound) for bound in self.interval)
        plural = "s" if self.held_out != 1 else ""
        text = (f"Likely {low}–{high}% right on {self.noun}s like these (from {self.held_out} held-out support "
                f"{self.noun}{plural}).")
        pairs = self.confused_pairs(1)
        if pairs:
            true, predicted, _ = pairs[0]
            text += f" {true!r} and {predicted!r} were confused: add {self.noun}s of both."
        else:
            text += " No confusions among them."
        if self.not_estimable:
            text += f" Not estimable for {', '.join(map(repr, self.not_estimable))} (a single {self.noun} each)."
        return text

    def to_dict(self) -> dict:
        """The JSON the web app's ``classify`` endpoint returns."""
        return {"accuracy": self.accuracy, "interval": list(self.interval) if self.interval else None,
                "per_class": self.per_class, "confusion": self.confusion, "held_out": self.held_out,
                "confused_pairs": [list(pair) for pair in self.confused_pairs()], "summary": self.summary()}


def folds_of(targets: Tensor, max_folds: int = MAX_FOLDS) -> list[Tensor]:
    """Index sets to hold out: fold k holds the k-th image of every class with two or more (with
    more than ``max_folds`` images, every ``max_folds``-th), so each such image is held out once and
    every class keeps a support image in every fold."""
    ranks: dict[int, int] = {}  # images seen so far per class
    folds: list[list[int]] = [[] for _ in range(max_folds)]
    counts = torch.bincount(targets)
    for index, label in enumerate(targets.tolist()):
        if counts[label] >= 2:
            folds[ranks.get(label, 0) % max_folds].append(index)
            ranks[label] = ranks.get(label, 0) + 1
    return [torch.tensor(fold) for fold in folds if fold]


def wilson_interval(correct: int, total: int, z: float = Z_90 * INTERVAL_WIDENING) -> tuple[float, float]:
    """The Wilson score interval of a proportion: stays inside [0, 1] and is sensible at 0 or all right."""
    share = correct / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    # exact at the ends: rounding left the upper bound of all-right a hair under 1, excluding a perfect score
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    return low, 1.0 if correct == total else min(1.0, centre + half)


def assess(labels: Sequence[str], targets: Tensor, predict_held_out, noun: str = "image") -> Assessment:
    """Run every fold: ``predict_held_out(held)`` adapts without the examples ``held`` and returns
    their predicted classes. Builds the estimate from the predictions (``noun``: what the examples are)."""
    started = time.perf_counter()
    ways = len(labels)
    confusion = [[0] * ways for _ in range(ways)]
    folds = folds_of(targets)
    for held in folds:
        for true, predicted in zip(targets[held].tolist(), predict_held_out(held).tolist()):
            confusion[true][predicted] += 1
    held_out = sum(len(fold) for fold in folds)
    correct = sum(confusion[c][c] for c in range(ways))
    per_class = {label: (confusion[c][c] / sum(confusion[c]) if sum(confusion[c]) else None)
                 for c, label in enumerate(labels)}
    return Assessment(list(labels), correct / held_out if held_out else None,
                      wilson_interval(correct, held_out) if held_out else None, per_class, confusion,
                      held_out, len(folds), time.perf_counter() - started, noun)
