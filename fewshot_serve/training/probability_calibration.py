"""Fitting the served softmax's temperatures and "unsure" level on validation tasks, and measuring calibration.

On episodes of classes the model file may be tuned on (its validation classes, or collections kept
for choosing models, never test classes), each adapted with the file's own inner loop as serving
adapts, the queries' logits are collected once; the temperature for a shot count is then the one
that minimizes the queries' log-loss (:func:`fit_temperature`), and the "unsure" level the highest
top probability below which at least a third of the answers are wrong (:func:`unsure_level`). What
they do on held-out classes is measured with :func:`calibration_report` and stated in the model cards
(``models/measure_calibration.py``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..calibration import METHOD, CalibratedSoftmax
from ..data.datasets import ImageClasses, load_folder_tree
from ..data.episodes import ImageEpisodes
from ..data.sources import TEXT_DATASETS, DataSpec, load_splits
from ..data.text_datasets import TextClasses
from ..files.model_file import Recipe, load_model, save_changed_copy
from ..inner_loop import adapt
from ..networks import MetaNetwork
from ..preprocessing import Preprocessing
from ..text_preprocessing import TextPreprocessing
from .frozen_body import AdaptedPart, CachedEpisodes, cache_frozen_part

#: Bins of the expected calibration error (equal width over the top probability), as the cards report it.
ECE_BINS = 15
#: "Unsure" marks answers below the highest level under which at least this share is wrong.
UNSURE_WRONG_SHARE = 1 / 3
#: ... counted over at least this many answers, so that a handful of low, wrong answers cannot set it.
UNSURE_MIN_ANSWERS = 20


@dataclass
class EpisodeSource:
    """Episodes of one set of classes as the file's inner loop adapts to them.

    Where the frozen part computes each example on its own (a text encoder's cached layers, a
    fixed-norm backbone), it is computed once per example here and episodes are drawn from that
    table, as serving computes it once per request; otherwise each episode runs the whole network.
    ``within_group``: an episode's classes come from one group (ARSC's binary tasks).
    """

    name: str
    view: MetaNetwork | AdaptedPart
    classes: ImageClasses | TextClasses
    preprocessing: Preprocessing | None
    table: Tensor | None = None
    per_token: bool = False
    within_group: bool = False

    @classmethod
    def of(cls, name: str, network: MetaNetwork, classes: ImageClasses | TextClasses,
           preprocessing: Preprocessing | TextPreprocessing, within_group: bool = False) -> EpisodeSource:
        cpu = torch.device("cpu")
        if isinstance(classes, TextClasses):
            part = AdaptedPart(network)
            table = cache_frozen_part(network, classes, preprocessing, cpu, part=part)
            return cls(name, part, classes, None, table, part.caches_tokens, within_group)
        if network.has_per_image_frozen_part:
            return cls(name, AdaptedPart(network), classes, preprocessing,
                       cache_frozen_part(network, classes, preprocessing, cpu), within_group=within_group)
        return cls(name, network, classes, preprocessing, within_group=within_group)

    def sampler(self, ways: int, shots: int, queries: int) -> ImageEpisodes | CachedEpisodes:
        episodes = ImageEpisodes(self.classes, self.preprocessing, ways, shots, queries,
                                 within_group=self.within_group)
        return episodes if self.table is None else CachedEpisodes(episodes, self.table, self.per_token)

    def query_logits(self, recipe: Recipe, ways: int, shots: int, episodes: int, queries: int = 15,
                     seed: int = 0, progress: bool = True) -> tuple[Tensor, Tensor]:
        """The queries' logits ``[episodes * ways * queries, ways]`` and classes after the file's inner
        loop adapted to each episode's support, as serving adapts (first order, its test-time steps)."""
        sampler, generator = self.sampler(ways, shots, queries), torch.Generator().manual_seed(seed)
        meta = {k: v.detach() for k, v in self.view.named_parameters()}
        logits, targets = [], []
        for _ in tqdm(range(episodes), desc=f"{self.name} {ways}-way {shots}-shot", disable=not progress,
                      leave=False):
            batch = sampler.sample(generator, 1, "cpu")
            xs, ys, xq = batch.x_support[0], batch.y_support[0], batch.x_query[0]
            start = self.view.task_parameters(meta, ways)
            params = adapt(self.view, start, xs, ys, recipe.inner_lrs, recipe.test_steps, first_order=True).params
            with torch.no_grad():
                logits.append(self.view.apply_params(params, torch.cat([xs, xq]), n_ref=len(xs))[len(xs):])
            targets.append(batch.y_query[0])
        return torch.cat(logits).double(), torch.cat(targets)


def episode_sources(network: MetaNetwork, recipe: Recipe, split: str | None, folders: Sequence[Path] = (),
                    data_root: Path | None = None, images_per_class: int | None = None) -> list[EpisodeSource]:
    """The classes to fit on or to measure: the ``split`` classes of the model's own dataset (None: none),
    then every class of each folder of class folders (a collection kept for choosing models)."""
    preprocessing = recipe.input_preprocessing()
    sources = [EpisodeSource.of(folder.name, network, load_folder_tree(folder, preprocessing, images_per_class),
                                preprocessing) for folder in folders]
    if split is not None:
        spec = DataSpec(recipe.dataset, data_root, split_seed=recipe.split_seed, images_per_class=images_per_class)
        within_group = TEXT_DATASETS.get(recipe.dataset, (None, False))[1]
        classes = load_splits(spec, preprocessing)[split]
        sources.insert(0, EpisodeSource.of(f"{recipe.dataset} {split} classes", network, classes, preprocessing,
                                           within_group))
    return sources


def log_loss(logits: Tensor, targets: Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits / temperature)``."""
    return torch.nn.functional.cross_entropy(logits.double() / temperature, targets).item()


def fit_temperature(logits: Tensor, targets: Tensor, low: float = 1e-2, high: float = 1e2) -> float:
    """The temperature in ``[low, high]`` with the least log-loss, by golden-section search over its log.

    The log-loss is convex in the inverse temperature (a log-sum-exp of linear functions minus a
    linear one), so it has one minimum along the search line and the search finds it.
    """
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):  # the bracket shrinks to 0.618^80 of 9.2: far below float noise
        left, right = b - ratio * (b - a), a + ratio * (b - a)
        if log_loss(logits, targets, math.exp(left)) <= log_loss(logits, targets, math.exp(right)):
            b = right
        else:
            a = left
    return math.exp((a + b) / 2)


def expected_calibration_error(probabilities: Tensor, targets: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error over equal-width bins of the top probability: the answers'
    share-weighted mean gap between each bin's accuracy and its mean top probability."""
    return sum(row["answers"] * abs(row["accuracy"] - row["confidence"])
               for row in reliability(probabilities, targets, bins)) / len(targets)


def reliability(probabilities: Tensor, targets: Tensor, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per non-empty bin of the top probability: its range, mean top probability, accuracy and answer count."""
    confidence, right = top_and_right(probabilities, targets)
    which = torch.clamp((confidence * bins).long(), max=bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            rows.append({"from": b / bins, "to": (b + 1) / bins, "confidence": confidence[members].mean().item(),
                         "accuracy": right[members].mean().item(), "answers": int(members.sum())})
    return rows


def top_and_right(probabilities: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Each answer's top probability, and whether its top class is the target (as float64)."""
    confidence, predicted = probabilities.double().max(1)
    return confidence, (predicted == targets).double()


def unsure_level(probabilities: Tensor, targets: Tensor, wrong_share: float = UNSURE_WRONG_SHARE,
                 min_answers: int = UNSURE_MIN_ANSWERS) -> float:
    """The highest top probability below which at least ``wrong_share`` of the answers are wrong
    (over at least ``min_answers`` of them); 0 (nothing marked) where no level qualifies."""
    confidence, right = top_and_right(probabilities, targets)
    order = confidence.argsort()
    confidence, wrong = confidence[order], 1 - right[order]
    share = wrong.cumsum(0) / torch.arange(1, len(wrong) + 1, dtype=torch.float64)
    qualifies = (share >= wrong_share) & (torch.arange(1, len(wrong) + 1) >= min_answers)
    if not qualifies.any():
        return 0.0
    last = int(qualifies.nonzero().max())  # the answers up to ``last`` are marked: the level lies just above it
    return confidence[last + 1].item() if last + 1 < len(confidence) else 1.0


def calibration_report(logits: Tensor, targets: Tensor, temperature: float, level: float) -> dict[str, float]:
    """What the cards state for one setting: accuracy, mean top probability, expected calibration error,
    right answers under one half, and how often marked and unmarked answers are wrong."""
    probabilities = CalibratedSoftmax(temperature)(logits)
    confidence, right = top_and_right(probabilities, targets)
    marked = confidence < level
    return {"answers": len(targets), "temperature": temperature, "accuracy": right.mean().item(),
            "mean_top_probability": confidence.mean().item(),
            "ece": expected_calibration_error(probabilities, targets),
            "right_under_one_half": ((confidence < 0.5) & (right == 1)).sum().item() / max(right.sum().item(), 1),
            "marked_unsure": marked.double().mean().item(),
            "wrong_when_marked": (1 - right[marked]).mean().item() if marked.any() else float("nan"),
            "wrong_when_unmarked": (1 - right[~marked]).mean().item() if (~marked).any() else float("nan")}


def calibrate_probabilities(source: str | os.PathLike, out: str | os.PathLike, sources: Sequence[EpisodeSource],
                            ways: int = 5, shots: Sequence[int] = (1, 5), episodes: int = 300, queries: int = 15,
                            command: str = "", progress: bool = True) -> Recipe:
    """Write a copy of ``source`` whose recipe holds a temperature per shot count fitted on ``sources``'
    episodes (pooled) and the "unsure" level of the calibrated probabilities over all of them."""
    if not sources or episodes < 1 or ways < 2 or not shots or min(shots) < 1:
        raise ValueError("calibration needs a source of classes, episodes >= 1, ways >= 2 and shot counts >= 1")
    network, recipe = load_model(source)
    temperatures, calibrated = {}, []
    for count in shots:
        pooled = [s.query_logits(recipe, ways, count, episodes, queries, progress=progress) for s in sources]
        logits, targets = torch.cat([p[0] for p in pooled]), torch.cat([p[1] for p in pooled])
        temperatures[str(count)] = round(fit_temperature(logits, targets), 6)
        calibrated.append((CalibratedSoftmax(temperatures[str(count)])(logits), targets))
    level = unsure_level(torch.cat([p for p, _ in calibrated]), torch.cat([t for _, t in calibrated]))
    calibration = {"method": METHOD, "temperatures": temperatures, "unsure_below": round(level, 6),
                   "fitted_on": f"{', '.join(s.name for s in sources)}: {ways}-way, {episodes} episodes per shot "
                                f"count and source, {queries} queries a class"}
    return save_changed_copy(source, out, network, recipe, command, probability_calibration=calibration)
