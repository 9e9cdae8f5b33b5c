"""Few-shot evaluation as the literature reports it: mean over episodes with a 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .episodes import ImageEpisodes, SinusoidTasks
from .meta_learning import adapted_metrics, vmap_is_faster
from .networks import MetaNetwork


@dataclass(frozen=True)
class EvaluationResult:
    metric: str  # "accuracy" or "mse"
    mean: float
    ci95: float  # half-width of the normal 95% confidence interval of the mean
    episodes: int

    @classmethod
    def of_scores(cls, metric: str, scores: list[float]) -> "EvaluationResult":
        """Mean and normal 95% interval of per-episode scores."""
        values = torch.tensor(scores, dtype=torch.float64)
        spread = float(values.std()) if len(scores) > 1 else 0.0
        return cls(metric, float(values.mean()), 1.96 * spread / math.sqrt(len(scores)), len(scores))


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
