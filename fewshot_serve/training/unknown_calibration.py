"""Calibrating "none of these" on training classes: the score's threshold for a stated false-rejection rate.

On episodes of the model's own training classes, adapted with the file's inner loop as serving
adapts, every query belongs to its task; the threshold is the score (:mod:`fewshot_serve.unknown`)
that this share of them exceeds, one per shot count. Training classes, since the test classes
must stay untouched and the validation classes choose other things; the rate a user sees on new
classes is measured on test classes and stated in the model cards
(``models/measure_assessment.py --rejection``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from ..data.datasets import ImageClasses
from ..data.episodes import ImageEpisodes, TaskBatch
from ..data.sources import DataSpec, load_splits
from ..files.model_file import Recipe, load_model, save_changed_copy
from ..inner_loop import adapt
from ..networks import MetaNetwork
from ..preprocessing import Preprocessing
from ..unknown import SCORE, unknown_scores
from .frozen_body import AdaptedPart, CachedEpisodes, cache_frozen_part


class ScoredEpisodes:
    """Episodes of ``classes`` as the file's inner loop adapts to them, with each query's score.

    ``table``: the frozen part's output for every image of ``classes`` (:func:`frozen_table`), where
    it computes each image on its own; otherwise (None) it runs per episode.
    """

    def __init__(self, network: MetaNetwork, recipe: Recipe, classes: ImageClasses, preprocessing: Preprocessing,
                 table: Tensor | None, ways: int, shots: int, queries: int) -> None:
        self.recipe = recipe
        sampler = ImageEpisodes(classes, preprocessing, ways, shots, queries)
        if table is not None:
            self.view, self.sampler = AdaptedPart(network), CachedEpisodes(sampler, table)
        else:
            self.view, self.sampler = network, sampler
        self.meta_params = {k: v.detach() for k, v in self.view.named_parameters()}

    def sample(self, generator: torch.Generator) -> TaskBatch:
        return self.sampler.sample(generator, 1, "cpu")

    def scores(self, batch: TaskBatch, task_labels: int | None = None) -> tuple[Tensor, Tensor]:
        """Adapt to the support images of labels below ``task_labels`` (default: all) and score every
        query: ``(scores [Q], whether each query's class is in the task [Q])``."""
        ways = batch.ways if task_labels is None else task_labels
        task = batch.y_support[0] < ways
        xs, ys, xq = batch.x_support[0][task], batch.y_support[0][task], batch.x_query[0]
        start = self.view.task_parameters(self.meta_params, ways)
        adaptation = adapt(self.view, start, xs, ys, self.recipe.inner_lrs, self.recipe.test_steps, first_order=True)
        params = {k: v.detach() for k, v in adaptation.params.items()}
        with torch.no_grad():
            h = self.view.frozen_part(self.view.at_step(start, 0), torch.cat([xs, xq]), n_ref=len(xs))
            features = self.view.head_input(params, h, n_ref=len(xs))
            return unknown_scores(features, ys, ways), batch.y_query[0] < ways


def frozen_table(network: MetaNetwork, classes: ImageClasses, preprocessing: Preprocessing) -> Tensor | None:
    """The frozen part's output for every image of ``classes``, where it computes each image on its own."""
    if not network.has_per_image_frozen_part:
        return None
    return cache_frozen_part(network, classes, preprocessing, torch.device("cpu"))


def calibrate_unknown(source: str | Path, out: str | Path, false_rejection: float = 0.05, ways: int = 5,
                      shots: tuple[int, ...] = (1, 5), episodes: int = 300, queries: int = 15,
                      data_root: Path | None = None, images_per_class: int | None = None,
                      command: str = "", progress: bool = True) -> Recipe:
    """Write a copy of ``source`` whose recipe holds thresholds calibrated on its training classes:
    on ``episodes`` tasks per shot count, ``false_rejection`` of in-task queries score above them."""
    if not 0 < false_rejection < 1:
        raise ValueError(f"the false-rejection rate must be in (0, 1), got {false_rejection!r}")
    if episodes < 1 or ways < 2 or not shots or min(shots) < 1:
        raise ValueError("calibration needs episodes >= 1, ways >= 2 and shot counts >= 1")
    network, recipe = load_model(source)
    if not network.head_keys:
        raise ValueError(f"{source}: a {type(network).__name__} has no class features to score queries by")
    preprocessing = recipe.image_preprocessing()
    spec = DataSpec(recipe.dataset, data_root, split_seed=recipe.split_seed, images_per_class=images_per_class)
    classes = load_splits(spec, preprocessing)["train"]
    table, thresholds = frozen_table(network, classes, preprocessing), {}
    for count in shots:
        scored = ScoredEpisodes(network, recipe, classes, preprocessing, table, ways, count, queries)
        generator = torch.Generator().manual_seed(0)
        tasks = tqdm(range(episodes), desc=f"calibrating {ways}-way {count}-shot", disable=not progress, leave=False)
        in_task = torch.cat([scored.scores(scored.sample(generator))[0] for _ in tasks])
        thresholds[str(count)] = torch.quantile(in_task.double(), 1 - false_rejection).item()
    calibration = {"score": SCORE, "thresholds": thresholds, "false_rejection": false_rejection,
                   "calibrated_on": f"{recipe.dataset} training classes (split seed {recipe.split_seed}), {ways}-way, "
                                    f"{episodes} episodes per shot count, {queries} queries a class"}
    return save_changed_copy(source, out, network, recipe, command, unknown_calibration=calibration)
