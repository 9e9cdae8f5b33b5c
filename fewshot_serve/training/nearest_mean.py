"""The no-inner-loop baseline: classify by the nearest class mean of a network's features.

This is what supervised pretraining alone achieves (SimpleShot, Wang et al. 2019): pretraining
validates with it, and the model card compares meta-learning against it on the very episodes
:func:`~fewshot_serve.training.evaluation.evaluate_episodes` scores (same sampler, same seed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.episodes import ImageEpisodes
from ..networks import PooledFeatureClassifier
from .evaluation import EvaluationResult
from .frozen_body import per_image


def embed_images(network: PooledFeatureClassifier, params: dict[str, Tensor], images: Tensor, normalize,
                 device: torch.device) -> Tensor:
    """Features ``[n, feature_dim]`` (float32, CPU) of uint8 ``images``, each image on its own (fixed norm)."""
    return per_image(lambda x: network.embed(params, x.contiguous(memory_format=torch.channels_last)).float().cpu(),
                     network, images, normalize, device, "nearest-mean features")


def nearest_mean_accuracy(features: Tensor, sampler: ImageEpisodes, episodes: int, seed: int) -> EvaluationResult:
    """Mean accuracy ± 95% CI of nearest-class-mean classification over ``sampler``'s episodes.

    ``features`` holds one row per image of the sampler's classes (``sampler.classes.images``).
    Features are L2-normalized first, so the comparison is by direction, not magnitude.
    """
    if sampler.rotations != 1 or sampler.augment is not None:
        raise ValueError("nearest-mean evaluation takes plain episodes (no rotations or augmentation)")
    unit = F.normalize(features, dim=-1)
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(episodes):
        picks = torch.stack([indices for indices, _ in sampler.sample_indices(generator)])  # [ways, shots + queries]
        chosen = unit[picks]
        means = chosen[:, : sampler.shots].mean(1)
        queries = chosen[:, sampler.shots :].reshape(-1, unit.shape[1])
        predicted = torch.cdist(queries, means).argmin(1)
        truth = torch.arange(sampler.ways).repeat_interleave(sampler.queries)
        scores.append((predicted == truth).float().mean().item())
    return EvaluationResult.of_scores("accuracy", scores)
