"""Augmentation for training classes: random crop with padding (handwriting: shifts, and optionally
affine distortions), and for photos also horizontal flip and colour jitter; and CutMix for
supervised pretraining.

Applied to whole uint8 batches ``[n, 3, S, S]`` in torch (no per-image PIL work), with every random
draw taken from the caller's ``torch.Generator``, so a seeded run sees the same augmented images
every time, also after a resume.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop(images: Tensor, generator: torch.Generator, padding: int) -> Tensor:
    """Shift each image by up to ``padding`` pixels each way: a random crop of its reflect-padded copy.

    This is all handwriting gets: a mirrored character can be another character, and Omniglot's
    rotations are new classes, not variants. Returns float32 ``[n, C, S, S]`` of uint8 values.
    """
    n, _, height, width = images.shape
    padded = F.pad(images.float(), (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy.view(n, 1, 1) + torch.arange(height).view(1, height, 1)).expand(n, height, width)
    cols = (dx.view(n, 1, 1) + torch.arange(width).view(1, 1, width)).expand(n, height, width)
    # advanced indices around a slice put their dims first: [n, S, S, C]
    return padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def augment_characters(images: Tensor, generator: torch.Generator, padding: int = 3, distortion: float = 0.0
                       ) -> Tensor:
    """Randomly distort (:func:`distort`, where ``distortion`` > 0), then shift (:func:`random_crop`)
    uint8 handwriting images."""
    if distortion > 0:
        images = distort(images, generator, distortion)
    return random_crop(images, generator, padding).round_().to(torch.uint8)


def distort(images: Tensor, generator: torch.Generator, strength: float) -> Tensor:
    """A random affine distortion of each uint8 image, as another hand might draw the same character.

    At ``strength`` 1 the ranges are those of Koch et al. (2015) for Omniglot: rotation within
    ±10°, shear within ±0.3, scaling by 0.8-1.2 on each axis; smaller strengths scale every range
    down. The border is repeated outward (the paper), and the result is bilinear. Returns float32
    ``[n, C, S, S]`` of uint8 values.
    """
    n = images.shape[0]
    angle, shear_x, shear_y, scale_x, scale_y = strength * (2.0 * torch.rand(5, n, generator=generator) - 1.0)
    angle, shear_x, shear_y = angle * math.radians(10.0), 0.3 * shear_x, 0.3 * shear_y
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear = torch.stack([torch.stack([torch.ones(n), shear_x], -1), torch.stack([shear_y, torch.ones(n)], -1)], -2)
    scale = torch.diag_embed(torch.stack([1.0 + 0.2 * scale_x, 1.0 + 0.2 * scale_y], -1))
    # affine_grid maps output to input coordinates: the inverse of the distortion drawn above
    forward = rotation @ shear @ scale
    theta = torch.cat([torch.linalg.inv(forward), torch.zeros(n, 2, 1)], -1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_photos(images: Tensor, generator: torch.Generator, padding: int = 4, jitter: float = 0.4) -> Tensor:
    """Randomly crop (after reflect-padding by ``padding``), flip and colour-jitter uint8 photos.

    Colour jitter scales brightness, contrast and saturation by factors in ``[1 - jitter, 1 + jitter]``
    (torchvision's ``ColorJitter(0.4, 0.4, 0.4)`` convention), one draw per image.
    """
    n = images.shape[0]
    x = random_crop(images, generator, padding)
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    factors = 1.0 + jitter * (2.0 * torch.rand(3, n, 1, 1, 1, generator=generator) - 1.0)
    brightness, contrast, saturation = factors
    x = x * brightness
    level = luminance(x).mean((2, 3), keepdim=True)
    x = (x - level) * contrast + level
    gray = luminance(x)
    x = (x - gray) * saturation + gray
    return x.clamp_(0, 255).round_().to(torch.uint8)


def luminance(x: Tensor) -> Tensor:
    """ITU-R 601 luma of RGB ``[n, 3, H, W]``, as ``[n, 1, H, W]`` (what PIL's "L" conversion uses)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


class CutMix(NamedTuple):
    """A CutMix batch: ``images`` hold a box of ``partner``'s images; ``kept`` is each label's weight."""

    images: Tensor
    partner: Tensor  # index into the batch of the image pasted into each one
    kept: float  # fraction of each image's own pixels: the loss weight of its own label


def cutmix(images: Tensor, generator: torch.Generator, probability: float) -> CutMix:
    """With ``probability``, paste one random box of a shuffled copy of the batch into every image
    (CutMix, Yun et al. 2019); otherwise return the batch unchanged (``kept`` 1).

    A regularizer for pretraining: a label is worth only the area it still covers, so the network
    cannot rest on one discriminative patch, and its features stay useful for classes it has not
    seen. One box and one area for the whole batch, the area drawn uniformly (Beta(1, 1)), the box
    clipped at the border and ``kept`` measured after clipping.
    """
    n, _, height, width = images.shape
    identity = torch.arange(n)
    if probability <= 0 or torch.rand((), generator=generator) >= probability:
        return CutMix(images, identity, 1.0)
    area = torch.rand((), generator=generator).item()
    box_h, box_w = round(height * math.sqrt(area)), round(width * math.sqrt(area))
    cy = int(torch.randint(0, height, (), generator=generator))
    cx = int(torch.randint(0, width, (), generator=generator))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
    partner = torch.randperm(n, generator=generator)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[partner, :, top:bottom, left:right]
    return CutMix(mixed, partner, 1.0 - (bottom - top) * (right - left) / (height * width))
