"""The networks that get meta-learned: Conv4 for images, a small MLP for sinusoid regression.

Both are ordinary ``nn.Module``s whose parameters are only ever *read* through
``torch.func.functional_call`` with a params dict, so one module instance can serve any number
of concurrent adaptations without copies.

Two choices here matter for serving:

* **Support-set BatchNorm.** MAML uses BatchNorm with batch statistics and no running averages.
  We take those statistics from the *support* images only (the first ``n_ref`` rows of the
  batch), in meta-training and at serving alike. A query's prediction then never depends on the
  other queries it is batched with, and the adapted classifier freezes into a plain eval-mode
  network (the support statistics become its running statistics) that exports to ONNX.
* **One shared head row** (Ye & Chao, ICLR 2022). The head holds a single learned weight row and
  bias; a task with N classes starts from N identical copies of it. Identical rows make the
  initial logits equal for every class, so the adapted model is invariant to the order of the
  classes and works for any N >= 2 regardless of the N used in meta-training. Unlike a
  zero-initialized head, the shared row is itself meta-learned (zero is one point it may learn).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-5

#: Parameters a task copies once per class (dimension 0) before its inner loop.
HEAD_KEYS = ("head.weight", "head.bias")


def support_norm(x: Tensor, weight: Tensor, bias: Tensor, n_ref: int | None) -> Tensor:
    """BatchNorm over ``x`` with statistics of its first ``n_ref`` rows (all rows if None)."""
    ref = x if n_ref is None else x[:n_ref]
    mean = ref.mean(dim=(0, 2, 3), keepdim=True)
    var = ref.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + BN_EPS)
    return (x - mean) * scale + bias.view(1, -1, 1, 1)


class SupportBatchNorm(nn.Module):
    """Affine BatchNorm whose statistics come from the support rows of the batch."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        return support_norm(x, self.weight, self.bias, n_ref)


class ConvBlock(nn.Module):
    """3x3 conv -> support BatchNorm -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = SupportBatchNorm(out_channels)

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        return F.max_pool2d(F.relu(self.norm(self.conv(x), n_ref)), 2)


class MetaNetwork(nn.Module):
    """What the inner loop needs from a network besides ``forward(x, n_ref)``."""

    task_kind: str  # "classification" or "regression"

    def config(self) -> dict[str, Any]:
        """The architecture's hyper-parameters, enough for :func:`build_network` to rebuild it."""
        raise NotImplementedError

    def task_parameters(self, meta_params: dict[str, Tensor], ways: int) -> dict[str, Tensor]:
        """The parameters a task with ``ways`` classes starts its inner loop from."""
        return dict(meta_params)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


class Conv4(MetaNetwork):
    """The standard 4-block convolutional few-shot learner (Vinyals et al. 2016; Finn et al. 2017)."""

    task_kind = "classification"

    def __init__(self, in_channels: int = 1, filters: int = 64, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"Conv4 needs images of at least 16x16 pixels, got {image_size}")
        self.in_channels, self.filters, self.image_size = in_channels, filters, image_size
        channels = [in_channels, filters, filters, filters, filters]
        self.blocks = nn.ModuleList(ConvBlock(a, b) for a, b in zip(channels, channels[1:]))
        side = image_size
        for _ in self.blocks:
            side //= 2
        self.feature_dim = filters * side * side
        self.head = nn.Linear(self.feature_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict[str, Any]:
        return {
            "architecture": "conv4",
            "in_channels": self.in_channels,
            "filters": self.filters,
            "image_size": self.image_size,
        }

    def features(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        for block in self.blocks:
            x = block(x, n_ref)
        return x.flatten(1)

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        return self.head(self.features(x, n_ref))

    def task_parameters(self, meta_params: dict[str, Tensor], ways: int) -> dict[str, Tensor]:
        params = dict(meta_params)
        for key in HEAD_KEYS:
            params[key] = meta_params[key].expand(ways, *meta_params[key].shape[1:]).clone()
        return params

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets)


class SinusoidMLP(MetaNetwork):
    """The 1-40-40-1 ReLU regressor of the MAML paper's sinusoid experiment."""

    task_kind = "regression"

    def __init__(self, hidden: int = 40) -> None:
        super().__init__()
        self.hidden = hidden
        self.layers = nn.Sequential(
            nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def config(self) -> dict[str, Any]:
        return {"architecture": "mlp", "hidden": self.hidden}

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        return self.layers(x)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(outputs, targets)


def build_network(config: dict[str, Any]) -> MetaNetwork:
    """Rebuild a network from :meth:`MetaNetwork.config` (as stored in a model file)."""
    config = dict(config)
    architecture = config.pop("architecture", None)
    if architecture == "conv4":
        return Conv4(**config)
    if architecture == "mlp":
        return SinusoidMLP(**config)
    raise ValueError(f"unknown architecture {architecture!r} (known: 'conv4', 'mlp')")
