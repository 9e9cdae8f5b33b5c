"""The networks that get meta-learned: Conv4 for images, a small MLP for sinusoid regression.

Both are ``nn.Module``s that own the meta-parameters, but compute as pure functions of a
params dict (:meth:`MetaNetwork.apply_params`), so one instance serves any number of concurrent
adaptations without copies and without ever being modified.

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
  As with a zero head, the first inner step moves only the head (the loss gradient reaching the
  features, sum_c (p_c - y_c) w, is zero while the rows are equal), so recipes use >= 2 steps.
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
    """BatchNorm over ``x`` with statistics of its first ``n_ref`` rows (all rows if None).

    Written out rather than ``F.batch_norm(training=True)``: MAML differentiates through it twice,
    and the fused kernel's second derivative under ``torch.func.grad`` disagreed with finite
    differences (relative error 7e-5 on the test of tests/test_meta_gradients.py).
    """
    ref = x if n_ref is None else x[:n_ref]
    var, mean = torch.var_mean(ref, dim=(0, 2, 3), unbiased=False, keepdim=True)
    scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + BN_EPS)
    return (x - mean) * scale + bias.view(1, -1, 1, 1)


class SupportBatchNorm(nn.Module):
    """The affine parameters of a BatchNorm whose statistics come from the support rows."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class ConvBlock(nn.Module):
    """Parameters of 3x3 conv -> support BatchNorm -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = SupportBatchNorm(out_channels)


class MetaNetwork(nn.Module):
    """A network whose computation is a pure function of a params dict.

    The modules only own and name the meta-parameters. :meth:`apply_params` computes with any
    params dict without touching the module, so concurrent adaptations on one instance are safe
    (``torch.func.functional_call`` would swap the module's attributes during each call, and two
    threads would see each other's weights).
    """

    task_kind: str  # "classification" or "regression"

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """The network's output on ``x`` with ``params``; normalization statistics from ``x[:n_ref]``."""
        raise NotImplementedError

    def forward(self, x: Tensor, n_ref: int | None = None) -> Tensor:
        return self.apply_params(dict(self.named_parameters()), x, n_ref)

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

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            x = F.conv2d(x, params[prefix + "conv.weight"], params[prefix + "conv.bias"], padding=1)
            x = support_norm(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"], n_ref)
            x = F.max_pool2d(F.relu(x), 2)
        return F.linear(x.flatten(1), params["head.weight"], params["head.bias"])

    @torch.no_grad()
    def freeze(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Sequential:
        """The adapted classifier as a plain eval-mode network ending in softmax.

        Each BatchNorm's support statistics under ``params`` become its running statistics, so
        the result computes exactly what :func:`~fewshot_serve.inner_loop.predict` does, one
        image at a time, from standard layers that export to ONNX.
        """
        layers: list[nn.Module] = []
        x = x_support
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            weight = params[prefix + "conv.weight"]
            conv = nn.Conv2d(weight.shape[1], weight.shape[0], kernel_size=3, padding=1)
            conv.weight.copy_(weight)
            conv.bias.copy_(params[prefix + "conv.bias"])
            h = conv.to(x.device)(x)
            norm = nn.BatchNorm2d(weight.shape[0], eps=BN_EPS)
            norm.weight.copy_(params[prefix + "norm.weight"])
            norm.bias.copy_(params[prefix + "norm.bias"])
            norm.running_mean.copy_(h.mean(dim=(0, 2, 3)))
            norm.running_var.copy_(h.var(dim=(0, 2, 3), unbiased=False))
            block = [conv, norm.to(x.device).eval(), nn.ReLU(), nn.MaxPool2d(2)]
            x = nn.Sequential(*block[1:])(h)
            layers += block
        head = nn.Linear(self.feature_dim, params["head.weight"].shape[0])
        head.weight.copy_(params["head.weight"])
        head.bias.copy_(params["head.bias"])
        frozen = nn.Sequential(*layers, nn.Flatten(), head, nn.Softmax(dim=-1)).to(x.device).eval()
        # channels-last: 2.6x faster classification on CPU, mostly from max-pooling (benchmarks/adapt_latency.py)
        return frozen.to(memory_format=torch.channels_last)

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

    def apply_params(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        for index in (0, 2):
            x = F.relu(F.linear(x, params[f"layers.{index}.weight"], params[f"layers.{index}.bias"]))
        return F.linear(x, params["layers.4.weight"], params["layers.4.bias"])

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
