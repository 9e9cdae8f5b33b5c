"""Photo augmentation for training classes: random crop with padding, horizontal flip, colour jitter.

Applied to whole uint8 batches ``[n, 3, S, S]`` in torch (no per-image PIL work), with every random
draw taken from the caller's ``torch.Generator``, so a seeded run sees the same augmented images
every time, also after a resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def augment_photos(images: Tensor, generator: torch.Generator, padding: int = 4, jitter: float = 0.4) -> Tensor:
    """Randomly crop (after reflect-padding by ``padding``), flip and colour-jitter uint8 photos.

    Colour jitter scales brightness, contrast and saturation by factors in ``[1 - jitter, 1 + jitter]``
    (torchvision's ``ColorJitter(0.4, 0.4, 0.4)`` convention), one draw per image.
    """
    n, _, height, width = images.shape
    x = images.float()
    padded = F.pad(x, (padding,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy.view(n, 1, 1) + torch.arange(height).view(1, height, 1)).expand(n, height, width)
    cols = (dx.view(n, 1, 1) + torch.arange(width).view(1, 1, width)).expand(n, height, width)
    # advanced indices around a slice put their dims first: [n, S, S, C]
    x = padded[torch.arange(n).view(n, 1, 1), :, rows, cols].permute(0, 3, 1, 2)
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
