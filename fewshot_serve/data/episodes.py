"""Task samplers: N-way K-shot episodes (of images, or of texts' cached features) and MAML's sinusoid tasks.

Both turn a ``torch.Generator`` into a :class:`TaskBatch` on the compute device, so a seeded run
draws the same tasks every time, and resuming restores the generator's state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..preprocessing import Preprocessing
from .datasets import ImageClasses
from .text_datasets import TextClasses


class TaskBatch(NamedTuple):
    """A meta-batch of T tasks of equal shape, as float tensors on the compute device."""

    x_support: Tensor  # [T, S, *input]
    y_support: Tensor  # [T, S]
    x_query: Tensor  # [T, Q, *input]
    y_query: Tensor  # [T, Q]
    ways: int  # classes per task (1 for regression)


class ImageEpisodes:
    """N-way K-shot episodes with Q queries per class from one split of a dataset.

    Labels 0..N-1 are given to the N sampled classes in random order in every episode. With
    ``rotate``, each class also appears rotated by 90, 180 and 270 degrees as three new classes
    (the Omniglot augmentation of Santoro et al. 2016). ``augment`` transforms each episode's uint8
    images with the sampler's generator (photo augmentation of training classes).

    With ``within_group``, an episode's classes all come from one group, drawn uniformly among the
    groups with ``ways`` classes of ``shots + queries`` examples (ARSC: a group is one binary
    sentiment task); smaller classes are left out rather than refused. ``classes`` may hold texts
    (:class:`~.text_datasets.TextClasses`) when only indices are drawn (the frozen-body cache).
    """

    def __init__(
        self,
        classes: ImageClasses | TextClasses,
        preprocessing: Preprocessing | None,
        ways: int,
        shots: int,
        queries: int,
        rotate: bool = False,
        augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        within_group: bool = False,
    ) -> None:
        if ways < 2 or shots < 1 or queries < 1:
            raise ValueError(f"need ways >= 2, shots >= 1, queries >= 1 (got {ways}, {shots}, {queries})")
        self.classes, self.preprocessing = classes, preprocessing
        self.ways, self.shots, self.queries = ways, shots, queries
        self.rotations = 4 if rotate else 1
        self.augment = augment
        self.groups = eligible_groups(classes, ways, shots + queries) if within_group else None
        if self.groups is not None:
            return
        if len(classes) * self.rotations < ways:
            raise ValueError(f"{ways}-way episodes need {ways} classes; this split has {len(classes) * self.rotations}")
        fewest = int(classes.counts().min())
        if fewest < shots + queries:
            raise ValueError(
                f"{shots} shots + {queries} queries need {shots + queries} examples per class; "
                f"a class in this split has only {fewest}"
            )

    def sample_indices(self, generator: torch.Generator) -> list[tuple[Tensor, int]]:
        """One episode's images: for each of its classes in label order, image indices and quarter turns.

        Everything random about an episode is drawn here, so any two consumers of the same seed
        (the inner loop's evaluation, the nearest-mean baseline) score the very same episodes.
        """
        if self.groups is None:
            n_virtual = len(self.classes) * self.rotations
            chosen = torch.randperm(n_virtual, generator=generator)[: self.ways]
        else:
            members = self.groups[int(torch.randint(len(self.groups), (), generator=generator))]
            chosen = members[torch.randperm(len(members), generator=generator)[: self.ways]]
        picks = []
        for virtual in chosen.tolist():
            cls, turns = divmod(virtual, self.rotations)
            start, stop = int(self.classes.offsets[cls]), int(self.classes.offsets[cls + 1])
            order = torch.randperm(stop - start, generator=generator)
            picks.append((start + order[: self.shots + self.queries], turns))
        return picks

    def sample_uint8(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One episode as uint8 images: support ``[N*K, C, S, S]``, labels, query ``[N*Q, ...]``, labels."""
        support, query = [], []
        for picks, turns in self.sample_indices(generator):
            images = self.classes.images[picks]
            if turns:
                images = torch.rot90(images, turns, dims=(-2, -1))
            support.append(images[: self.shots])
            query.append(images[self.shots :])
        xs, xq = torch.cat(support), torch.cat(query)
        if self.augment is not None:
            xs, xq = self.augment(xs, generator), self.augment(xq, generator)
        labels = torch.arange(self.ways)
        return xs, labels.repeat_interleave(self.shots), xq, labels.repeat_interleave(self.queries)

    def sample(self, generator: torch.Generator, tasks: int, device: torch.device | str) -> TaskBatch:
        episodes = [self.sample_uint8(generator) for _ in range(tasks)]
        xs, ys, xq, yq = (torch.stack(part).to(device) for part in zip(*episodes))
        normalize = self.preprocessing.normalize
        return TaskBatch(normalize(xs), ys, normalize(xq), yq, self.ways)


def eligible_groups(classes: ImageClasses | TextClasses, ways: int, needed: int) -> list[Tensor]:
    """Per group with at least ``ways`` classes of ``needed`` examples, those classes' indices."""
    members: dict[str, list[int]] = {}
    for index, (group, count) in enumerate(zip(classes.groups, classes.counts().tolist())):
        if count >= needed:
            members.setdefault(group, []).append(index)
    groups = [torch.tensor(found) for _, found in sorted(members.items()) if len(found) >= ways]
    if not groups:
        raise ValueError(f"no group of this split has {ways} classes of {needed} examples")
    return groups


class SinusoidTasks:
    """y = A·sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5] (Finn et al. 2017, section 5.1)."""

    ways = 1

    def __init__(self, shots: int, queries: int) -> None:
        if shots < 1 or queries < 1:
            raise ValueError("sinusoid tasks need shots >= 1 and queries >= 1")
        self.shots, self.queries = shots, queries

    def sample(self, generator: torch.Generator, tasks: int, device: torch.device | str) -> TaskBatch:
        amplitude = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=generator)
        phase = math.pi * torch.rand(tasks, 1, 1, generator=generator)
        x = -5.0 + 10.0 * torch.rand(tasks, self.shots + self.queries, 1, generator=generator)
        y = amplitude * torch.sin(x - phase)
        x, y = x.to(device), y.to(device)
        k = self.shots
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:], self.ways)
