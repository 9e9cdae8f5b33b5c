"""The no-inner-loop baseline: classify by the nearest class mean of a network's features.

This is what supervised pretraining alone achieves (SimpleShot, Wang et al. 2019): pretraining
validates with it, and the model card compares meta-learning against it on the very episodes
:func:`~fewshot_serve.evaluation.evaluate_episodes` scores (same sampler, same seed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .episodes import ImageEpisodes
from .evaluation import EvaluationResult
from .networks import ResNet12


@torch.no_grad()
def embed_images(network: ResNet12, params: dict[str, Tensor], images: Tensor, normalize, device: torch.device,
                 batch_size: int = 500) -> Tensor:
    """Features ``[n, feature_dim]`` (float32, CPU) of uint8 ``images``, each image on its own (fixed norm)."""
    if network.norm != "fixed":
        raise ValueError("nearest-mean features need a fixed-norm network (each image embedded on its own)")
    parts = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device)).contiguous(memory_format=torch.channels_last)
        parts.append(network.embed(params, x).float().cpu())
    return torch.cat(parts)


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
    values = torch.tensor(scores, dtype=torch.float64)
    spread = float(values.std()) if episodes > 1 else 0.0
    return EvaluationResult("accuracy", float(values.mean()), 1.96 * spread / math.sqrt(episodes), episodes)
