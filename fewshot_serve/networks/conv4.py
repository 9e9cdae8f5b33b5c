"""Conv4: the standard 4-block convolutional few-shot learner (Vinyals et al. 2016; Finn et al. 2017)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init  # frozen layers get their weights copied in: no random init

from .base import SharedHeadClassifier
from .config_checks import MAX_FILTERS, is_int, key_problems, step_count_problems
from .norms import BN_EPS, SupportBatchNorm, channel_statistics, support_norm, using_first_order_kernels


def channels_last_on_cpu(images: Tensor) -> Tensor:
    """``images`` channels-last on CPU, where pooling and the norms vectorize over channels; every
    convolution then keeps the layout. ``.to``, since ``.contiguous`` would leave a 1-channel
    input's strides as they are, and the first convolution's output NCHW."""
    return images.to(memory_format=torch.channels_last) if images.device.type == "cpu" else images


def relu_and_pool(x: Tensor) -> Tensor:
    """ReLU and 2x2 max-pooling, computed pool first: the same function (ReLU is monotonic) and, but
    where a window's maximum is tied, the same gradient, while ReLU and its backward touch a quarter
    of the values."""
    return F.relu(F.max_pool2d(x, 2))


class ConvBlock(nn.Module):
    """Parameters of 3x3 conv -> support BatchNorm -> ReLU -> 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, norm_states: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = SupportBatchNorm(out_channels, norm_states)


class Conv4(SharedHeadClassifier):
    """4 x [3x3 conv, support BatchNorm, ReLU, 2x2 max-pool], then the shared head row (each block
    computed as conv, norm, pool, ReLU: the same function, cheaper)."""


    def __init__(
        self, in_channels: int = 1, filters: int = 64, image_size: int = 28, norm_states: int = 0, lr_steps: int = 0
    ) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"Conv4 needs images of at least 16x16 pixels, got {image_size}")
        self.in_channels, self.filters, self.image_size = in_channels, filters, image_size
        self.norm_states = norm_states
        channels = [in_channels, filters, filters, filters, filters]
        self.blocks = nn.ModuleList(ConvBlock(a, b, norm_states) for a, b in zip(channels, channels[1:]))
        side = image_size
        for _ in self.blocks:
            side //= 2
        self.feature_dim = filters * side * side
        self.head = nn.Linear(self.feature_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.add_step_lrs(lr_steps)

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        problems = key_problems(config, {"in_channels", "filters", "image_size"}, {"norm_states", "lr_steps"})
        if not problems and not (is_int(config["filters"], 1, MAX_FILTERS) and is_int(config["in_channels"], 1, 3)):
            problems.append(f"conv4 filters must be in [1, {MAX_FILTERS}] and in_channels in [1, 3]")
        return problems + step_count_problems(config)

    def config(self) -> dict[str, Any]:
        return {
            "architecture": "conv4",
            "in_channels": self.in_channels,
            "filters": self.filters,
            "image_size": self.image_size,
            "norm_states": self.norm_states,
            "lr_steps": self.lr_steps,
        }

    def _is_fast_weight(self, name: str) -> bool:
        return super()._is_fast_weight(name) and not (self.norm_states and ".norm." in name)

    def at_step(self, params: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        params = super().at_step(params, step)
        if self.norm_states:
            row = min(step, self.norm_states - 1)
            params = {k: v[row] if ".norm." in k else v for k, v in params.items()}
        return params

    def head_input(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        if using_first_order_kernels():
            x = channels_last_on_cpu(x)
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            x = F.conv2d(x, params[prefix + "conv.weight"], params[prefix + "conv.bias"], padding=1)
            x = support_norm(x, params[prefix + "norm.weight"], params[prefix + "norm.bias"], n_ref)
            x = relu_and_pool(x)
        return x.flatten(1)

    def head_logits(self, params: dict[str, Tensor], features: Tensor) -> Tensor:
        return F.linear(features, params["head.weight"], params["head.bias"])

    @torch.no_grad()
    def fold(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Sequential:
        """The adapted classifier as a plain eval-mode network, images -> logits.

        Each BatchNorm, with the support statistics under ``params``, is folded into the
        convolution before it, so the result computes exactly what
        :func:`~fewshot_serve.inner_loop.predict` does, one image at a time, from standard layers
        that export to ONNX. Max-pooling comes before the ReLU (the same function, as ReLU is
        monotonic), so the ReLU touches a quarter of the values.
        """
        layers: list[nn.Module] = []
        x = channels_last_on_cpu(x_support)  # like the classifier it builds
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            weight = params[prefix + "conv.weight"]
            h = F.conv2d(x, weight, params[prefix + "conv.bias"], padding=1)
            mean, var = channel_statistics(h)
            scale = params[prefix + "norm.weight"] * torch.rsqrt(var + BN_EPS)
            shift = params[prefix + "norm.bias"] - mean * scale
            conv = skip_init(nn.Conv2d, weight.shape[1], weight.shape[0], kernel_size=3, padding=1,
                             device=weight.device, dtype=weight.dtype)
            conv.weight.copy_(weight * scale.view(-1, 1, 1, 1))
            conv.bias.copy_(params[prefix + "conv.bias"] * scale + shift)
            layers += [conv, nn.MaxPool2d(2), nn.ReLU()]
            # the next layer's statistics from this convolution's output, not from a second pass
            x = relu_and_pool(h * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))
        head = skip_init(nn.Linear, self.feature_dim, params["head.weight"].shape[0], device=x.device, dtype=x.dtype)
        head.weight.copy_(params["head.weight"])
        head.bias.copy_(params["head.bias"])
        folded = nn.Sequential(*layers, nn.Flatten(), head).eval()
        # channels-last: 2.6x faster classification on CPU, mostly from max-pooling (benchmarks/adapt_latency.py)
        return folded.to(memory_format=torch.channels_last)
