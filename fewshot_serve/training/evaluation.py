"""Few-shot evaluation as the literature reports it: mean over episodes with a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..data.episodes import ImageEpisodes, SinusoidTasks
from ..data.text_datasets import FixedTask
from ..networks import MetaNetwork
from ..serving.api import MAX_QUERIES, FewShotModel
from .meta_learning import adapted_metrics, vmap_is_faster


@dataclass(frozen=True)
class EvaluationResult:
    metric: str  # "accuracy" or "mse"
    mean: float
    ci95: float  # half-width of the normal 95% confidence interval of the mean
    episodes: int
    scores: tuple[float, ...] = field(default=(), repr=False, compare=False)  # per episode, in episode order

    @classmethod
    def of_scores(cls, metric: str, scores: list[float]) -> EvaluationResult:
        """Mean and normal 95% interval of per-episode scores."""
        values = torch.tensor(scores, dtype=torch.float64)
        spread = float(values.std()) if len(scores) > 1 else 0.0
        return cls(metric, float(values.mean()), 1.96 * spread / math.sqrt(len(scores)), len(scores), tuple(scores))


def paired_difference(before: EvaluationResult, after: EvaluationResult) -> EvaluationResult:
    """``after`` minus ``before``, episode by episode, with its 95% interval.

    Two models scored on the very same episodes (the same sampler and seed) differ far less from
    episode to episode than either's scores do, so the interval of the paired difference is much
    narrower than either model's own: it tells a real 0.05-point change from noise where two
    separate intervals of ± 0.2 points cannot.
    """
    if (before.metric, len(before.scores)) != (after.metric, len(after.scores)) or not before.scores:
        raise ValueError("a paired difference needs two results with the same metric and the same episodes")
    return EvaluationResult.of_scores(before.metric, [b - a for a, b in zip(before.scores, after.scores)])


def evaluate_episodes(
    network: MetaNetwork,
    sampler: ImageEpisodes | SinusoidTasks,
    inner_lrs: tuple[float, ...],
    steps: int,
    episodes: int,
    seed: int,
    device: torch.device,
    batch_size: int = 20,
    progress: bool = False,
) -> EvaluationResult:
    """Adapt to ``episodes`` freshly drawn tasks with ``steps`` inner steps and score the queries.

    The episodes depend only on ``seed``, so two models (or two step counts) are compared on
    the very same tasks.
    """
    if episodes < 1:
        raise ValueError("evaluation needs at least one episode")
    generator = torch.Generator().manual_seed(seed)
    meta_params = {k: v.detach() for k, v in network.named_parameters()}
    vectorize = vmap_is_faster(network, device)
    scores = []
    with tqdm(total=episodes, desc="evaluating", disable=not progress, leave=False) as bar:
        while len(scores) < episodes:
            tasks = min(batch_size, episodes - len(scores))
            batch = sampler.sample(generator, tasks, device)
            scores.extend(adapted_metrics(network, meta_params, batch, inner_lrs, steps, vectorize).tolist())
            bar.update(tasks)
    return EvaluationResult.of_scores("accuracy" if network.task_kind == "classification" else "mse", scores)


def evaluate_fixed_tasks(model: FewShotModel, tasks: list[FixedTask], steps: int | None = None,
                         progress: bool = False) -> EvaluationResult:
    """Accuracy on tasks whose support sets are fixed (ARSC's standard protocol): each task adapted once,
    through the serving API, and its queries classified; the mean is over tasks, as the literature reports."""
    scores = []
    for task in tqdm(tasks, desc="fixed tasks", disable=not progress, leave=False):
        adapted = model.adapt(task.support, steps)
        predicted = [max(row, key=row.get) for start in range(0, len(task.queries), MAX_QUERIES)
                     for row in adapted.classify(task.queries[start : start + MAX_QUERIES])]
        scores.append(sum(p == t for p, t in zip(predicted, task.query_labels)) / len(task.queries))
    return EvaluationResult.of_scores("accuracy", scores)
