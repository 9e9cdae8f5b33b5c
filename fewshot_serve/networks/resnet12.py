"""ResNet-12: the few-shot standard backbone for photos (Oreshkin et al. 2018; Lee et al. 2019).

Four residual blocks, each three 3x3 convolutions with BatchNorm and leaky ReLU (slope 0.1) on
the main path and a 1x1 convolution with BatchNorm on the shortcut, then 2x2 max-pooling;
global average pooling; then the ending every photo backbone shares
(:class:`~.base.PooledFeatureClassifier`: optional centring, unit length, the shared head row times
a learned logit temperature). Widths are configurable (64-160-320-640 in the literature; narrower
fits a CPU).

Two settings make it the backbone of "pretrain, then meta-learn":

* ``norm``: ``"support"`` normalizes with the support rows' statistics, as Conv4 does (for
  meta-training from scratch and for supervised pretraining, where the whole batch is the
  reference). ``"fixed"`` is a per-channel affine with no statistics at all: pretraining folds
  its population statistics into it (:func:`fixed_norm_params`), so a pretrained network
  classifies each image on its own, as it was pretrained, even from a single support image.
* ``adapt_from``: the first block the inner loop adapts (0: all; 4: only the head, as ANIL).
  Blocks before it are the :meth:`frozen_part`, computed once per image in the inner loop.

Centring the features (``centred``, :class:`~.base.PooledFeatureClassifier`) helps a pretrained
backbone on classes it has never seen: measured on the photo model's validation classes,
nearest-mean 1-shot accuracy rose from 51.3% to 53.1% (5-shot unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init  # frozen layers get their weights copied in: no random init

from .base import PooledFeatureClassifier
from .config_checks import MAX_FILTERS, is_flag, is_int, key_problems, step_count_problems
from .norms import BN_EPS, SupportBatchNorm, channel_statistics, support_norm

NORMS = ("support", "fixed")
LEAK = 0.1


class ResidualBlock(nn.Module):
    """Parameters of one block; the computation is :meth:`ResNet12._block`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = SupportBatchNorm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = SupportBatchNorm(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm3 = SupportBatchNorm(out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_norm = SupportBatchNorm(out_channels)
        for conv in (self.conv1, self.conv2, self.conv3, self.shortcut):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="leaky_relu", a=LEAK)


#: Running mean and variance per norm layer (name without ".weight"), updated in place by pretraining.
RunningStatistics = dict[str, tuple[Tensor, Tensor]]


class ResNet12(PooledFeatureClassifier):

    head_only_adapt_from = 4

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 160, 320, 640),
        image_size: int = 32,
        norm: str = "support",
        adapt_from: int = 0,
        lr_steps: int = 0,
        centred: bool = False,
        prototype_head: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"ResNet-12 needs 4 positive block widths, got {list(widths)}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0 <= adapt_from <= 4:
            raise ValueError(f"adapt_from must be a block index in [0, 4], got {adapt_from}")
        if image_size < 16:
            raise ValueError(f"ResNet-12 needs images of at least 16x16 pixels, got {image_size}")
        self.in_channels, self.widths, self.image_size = in_channels, tuple(widths), image_size
        self.norm, self.adapt_from = norm, adapt_from
        channels = [in_channels, *self.widths]
        self.blocks = nn.ModuleList(ResidualBlock(a, b) for a, b in zip(channels, channels[1:]))
        self.build_head(self.widths[-1], lr_steps, centred, prototype_head)

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        optional = {"lr_steps", "centred", "prototype_head"}
        problems = key_problems(config, {"in_channels", "widths", "image_size", "norm", "adapt_from"}, optional)
        if problems:
            return problems
        widths = config["widths"]
        if not (isinstance(widths, list) and len(widths) == 4 and all(is_int(w, 1, MAX_FILTERS) for w in widths)
                and is_int(config["in_channels"], 1, 3) and is_int(config["adapt_from"], 0, 4)
                and config["norm"] in NORMS and is_flag(config, "centred") and is_flag(config, "prototype_head")):
            problems.append(f"resnet12 needs 4 widths in [1, {MAX_FILTERS}], in_channels in [1, 3], adapt_from in "
                            f"[0, 4], norm in {NORMS}, and centred and prototype_head true or false")
        return problems + step_count_problems(config)

    def config(self) -> dict[str, Any]:
        return {
            "architecture": "resnet12",
            "in_channels": self.in_channels,
            "widths": list(self.widths),
            "image_size": self.image_size,
            "norm": self.norm,
            "adapt_from": self.adapt_from,
            "lr_steps": self.lr_steps,
            **({"centred": True} if self.centred else {}),  # absent from files made before centring existed
            **({"prototype_head": True} if self.prototype_head else {}),
        }

    def in_frozen_part(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to the blocks before ``adapt_from``."""
        return name.startswith("blocks.") and int(name.split(".")[1]) < self.adapt_from

    def _normalize(self, params: dict[str, Tensor], key: str, x: Tensor, n_ref: int | None,
                   running: RunningStatistics | None) -> Tensor:
        weight, bias = params[key + ".weight"], params[key + ".bias"]
        if self.norm == "fixed":
            return x * weight.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        if running is not None:  # supervised pretraining: whole-batch statistics, fused kernel (2-3x faster)
            mean, var = running[key]
            return F.batch_norm(x, mean, var, weight, bias, training=True, momentum=0.1, eps=BN_EPS)
        return support_norm(x, weight, bias, n_ref)

    def _block(self, params: dict[str, Tensor], index: int, x: Tensor, n_ref: int | None,
               running: RunningStatistics | None = None) -> Tensor:
        prefix = f"blocks.{index}."

        def conv_norm(conv: str, norm: str, h: Tensor, padding: int) -> Tensor:
            h = F.conv2d(h, params[prefix + conv + ".weight"], padding=padding)
            return self._normalize(params, prefix + norm, h, n_ref, running)

        h = F.leaky_relu(conv_norm("conv1", "norm1", x, 1), LEAK)
        h = F.leaky_relu(conv_norm("conv2", "norm2", h, 1), LEAK)
        h = conv_norm("conv3", "norm3", h, 1)
        h = F.leaky_relu(h + conv_norm("shortcut", "shortcut_norm", x, 0), LEAK)
        return F.max_pool2d(h, 2)

    def _blocks(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None, blocks: range,
                running: RunningStatistics | None = None) -> Tensor:
        for index in blocks:
            x = self._block(params, index, x, n_ref, running)
        return x

    def embed(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None,
              running: RunningStatistics | None = None) -> Tensor:
        """Pooled features ``[n, feature_dim]`` (what pretraining classifies and nearest-mean compares).

        With ``running`` (support norm only), every norm uses the whole batch's statistics and
        updates its running averages, as BatchNorm does in supervised training.
        """
        return self._blocks(params, x, n_ref, range(len(self.blocks)), running).mean((2, 3))

    def running_statistics(self) -> RunningStatistics:
        """Fresh running averages (mean 0, variance 1) for every norm layer, for :meth:`embed`."""
        return {name[: -len(".weight")]: (torch.zeros_like(p), torch.ones_like(p))
                for name, p in self.named_parameters() if "norm" in name and name.endswith(".weight")}

    def frozen_part(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        return self._blocks(params, x, n_ref, range(self.adapt_from))

    def pooled_features(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return self._blocks(params, h, n_ref, range(self.adapt_from, len(self.blocks))).mean((2, 3))

    @torch.no_grad()
    def folded_features(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Sequential:
        """:meth:`head_input` of images as a plain eval-mode network (the body of :meth:`fold`).

        Every norm is folded into the convolution before it: with support norm, the support
        statistics under ``params`` (measured layer by layer on ``x_support``) become constants;
        fixed norms fold as they are.
        """
        support = self.norm == "support"  # fixed norms need no statistics, so no pass over the support set
        blocks, x = [], x_support
        for index in range(len(self.blocks)):
            prefix, convs = f"blocks.{index}.", {}

            def fold(conv: str, norm: str, source: Tensor | None) -> Tensor | None:
                weight = params[prefix + conv + ".weight"]
                padding = weight.shape[-1] // 2
                h = F.conv2d(source, weight, padding=padding) if support else None
                scale, shift = self._affine(params, prefix + norm, h)
                layer = skip_init(nn.Conv2d, weight.shape[1], weight.shape[0], weight.shape[-1], padding=padding,
                                  device=weight.device, dtype=weight.dtype)
                layer.weight.copy_(weight * scale.view(-1, 1, 1, 1))
                layer.bias.copy_(shift)
                convs[conv] = layer
                return h * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1) if support else None

            h = fold("conv1", "norm1", x)
            h = fold("conv2", "norm2", F.leaky_relu(h, LEAK) if support else None)
            fold("conv3", "norm3", F.leaky_relu(h, LEAK) if support else None)
            fold("shortcut", "shortcut_norm", x)
            blocks.append(FrozenBlock(convs))
            x = blocks[-1](x) if support else None
        return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.unit_length())

    def _affine(self, params: dict[str, Tensor], key: str, h: Tensor | None) -> tuple[Tensor, Tensor]:
        """A norm layer as ``h * scale + shift`` per channel (support norm: statistics measured on ``h``)."""
        weight, bias = params[key + ".weight"], params[key + ".bias"]
        if self.norm == "fixed":
            return weight, bias
        mean, var = channel_statistics(h)
        scale = weight * torch.rsqrt(var + BN_EPS)
        return scale, bias - mean * scale


class FrozenBlock(nn.Module):
    """One residual block with its norms folded into its convolutions (serving and ONNX)."""

    def __init__(self, convs: dict[str, nn.Conv2d]) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.shortcut = (convs[k] for k in ("conv1", "conv2", "conv3", "shortcut"))

    def forward(self, x: Tensor) -> Tensor:
        # In place: each convolution's output is used once, and writing into it instead of into fresh
        # buffers makes the photo model's classification ~1.1x faster (benchmarks/inplace_activations.py).
        h = F.leaky_relu_(self.conv1(x), LEAK)
        h = F.leaky_relu_(self.conv2(h), LEAK)
        return F.max_pool2d(F.leaky_relu_(self.conv3(h).add_(self.shortcut(x)), LEAK), 2)


def fixed_norm_params(network: ResNet12, params: dict[str, Tensor], running: RunningStatistics) -> dict[str, Tensor]:
    """``params`` of a support-norm ResNet-12 rewritten for ``norm="fixed"``: each norm's running
    mean and variance folded into its affine, ``w / sqrt(var + eps)`` and ``b - mean * that``."""
    if network.norm != "support":
        raise ValueError("only a support-norm network has statistics to fold")
    fixed = {k: v.detach().clone() for k, v in params.items()}
    for key, (mean, var) in running.items():
        scale = params[key + ".weight"].detach() * torch.rsqrt(var + BN_EPS)
        fixed[key + ".weight"] = scale
        fixed[key + ".bias"] = params[key + ".bias"].detach() - mean * scale
    return fixed
