"""EfficientNet-Lite: an ImageNet-trained photo backbone (Tan & Le 2019; the mobile "Lite" variants).

Its weights come from outside (``fewshot-serve import-backbone``, :mod:`fewshot_serve.files.backbone_import`):
a backbone trained on 1.28 M ImageNet photos separates new classes far better than anything a
2-core CPU can pretrain (models/cards/photos-resnet12.md). The network is a pure function of a params dict like
:class:`~.resnet12.ResNet12`, and ends the same way (pooled features, optional centring, unit
length, the shared head row times a logit temperature), so the inner loop, Proto-MAML, learned
learning rates, the frozen-body cache, int8 storage and ONNX export work on it unchanged.

The Lite variants are EfficientNet without squeeze-excite and with ReLU6: a stem convolution, a
chain of inverted-residual blocks (1x1 expansion, depthwise k x k, 1x1 projection, a residual sum
where shape allows) and a 1x1 head convolution to 1280 channels. Every convolution is followed by
a norm; the import folds ImageNet BatchNorm's running statistics into a per-channel affine
(``norm="fixed"`` as a pretrained ResNet-12 has), so each image is computed on its own.

Two details must match the TensorFlow original for its weights to mean what they meant:

* **"Same" padding** (``padding="same"``, the default): a stride-2 convolution pads
  ``max((ceil(n/2)-1)*2 + k - n, 0)`` pixels in all, the extra one at the bottom/right;
  ``"symmetric"`` (``k // 2`` each side, PyTorch's habit) is kept for measuring what that costs;
* **ReLU6** activations and the input scaled by ``(x/255 - 0.498) / 0.502`` (the recipe's preprocessing).

``adapt_from`` counts *units*: 0 the stem, ``1..B`` the B blocks, ``B+1`` the head convolution;
the first ``adapt_from`` units are the :meth:`frozen_part`. ``B+2`` (the default) adapts the head
row alone; ``B+1`` adapts the head convolution and the row; ``B`` the last block too, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from .base import ENSEMBLE_OWNED_KEYS, PooledFeatureClassifier
from .config_checks import key_problems, step_count_problems

#: Per block: input channels, expanded channels (= input: no expansion), output channels, kernel, stride.
BlockSpec = tuple[int, int, int, int, int]
#: EfficientNet's stage strides, the same in every Lite variant (stages 1-7).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
MAX_BLOCKS = 64
MAX_CHANNELS = 4096
MAX_IMAGE_SIZE = 512
PADDINGS = ("same", "symmetric")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one spatial side: (before, after), the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_output_size(size: int, stride: int) -> int:
    """The side after a "same"-padded convolution of ``stride``."""
    return -(-size // stride)


class MBConv(nn.Module):
    """Parameters of one inverted-residual block; the computation is :meth:`EfficientNetLite._block`."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        channels, expanded, out, kernel, _ = spec
        if expanded != channels:
            self.expand = skip_init(nn.Conv2d, channels, expanded, 1, bias=False)
            self.expand_norm = FixedNorm(expanded)
        self.depthwise = skip_init(nn.Conv2d, expanded, expanded, kernel, groups=expanded, bias=False)
        self.depthwise_norm = FixedNorm(expanded)
        self.project = skip_init(nn.Conv2d, expanded, out, 1, bias=False)
        self.project_norm = FixedNorm(out)


class FixedNorm(nn.Module):
    """A per-channel affine: BatchNorm with its population statistics folded in (``weight``, ``bias``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class EfficientNetLite(PooledFeatureClassifier):

    in_channels = 3
    norm = "fixed"  # each image is computed on its own (what the frozen-body cache and ensembles need)

    def __init__(
        self,
        blocks: Sequence[Sequence[int]],
        stem_channels: int = 32,
        head_channels: int = 1280,
        image_size: int = 224,
        padding: str = "same",
        adapt_from: int | None = None,
        lr_steps: int = 0,
        centred: bool = False,
        prototype_head: bool = False,
    ) -> None:
        super().__init__()
        self.specs = check_blocks(blocks, stem_channels, head_channels)
        if not isinstance(image_size, int) or not 32 <= image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"EfficientNet-Lite needs an image size in [32, {MAX_IMAGE_SIZE}], got {image_size!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        units = self.head_only_adapt_from
        adapt_from = units if adapt_from is None else adapt_from  # the head only
        if not isinstance(adapt_from, int) or not 0 <= adapt_from <= units:
            raise ValueError(f"adapt_from must be a unit index in [0, {units}] (0: the stem, 1-{units - 2}: "
                             f"blocks, {units - 1}: the head convolution, {units}: the head only), got {adapt_from!r}")
        self.stem_channels, self.head_channels, self.image_size = stem_channels, head_channels, image_size
        self.padding, self.adapt_from = padding, adapt_from
        self.stem = skip_init(nn.Conv2d, 3, stem_channels, 3, bias=False)
        self.stem_norm = FixedNorm(stem_channels)
        self.blocks = nn.ModuleList(MBConv(spec) for spec in self.specs)
        self.conv_head = skip_init(nn.Conv2d, self.specs[-1][2], head_channels, 1, bias=False)
        self.head_norm = FixedNorm(head_channels)
        self.build_head(head_channels, lr_steps, centred, prototype_head)
        self.pads = self._paddings()

    #: Its config's keys (beside "architecture"); their values (block shapes, sizes) the constructor
    #: checks before it allocates anything.
    CONFIG_KEYS = frozenset({"blocks", "stem_channels", "head_channels", "image_size", "padding", "adapt_from",
                             "centred", "lr_steps", "prototype_head"})

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        return key_problems(config, set(cls.CONFIG_KEYS)) + step_count_problems(config)

    @classmethod
    def member_config_problems(cls, config: dict[str, Any]) -> list[str]:
        return key_problems(config, set(cls.CONFIG_KEYS - ENSEMBLE_OWNED_KEYS))

    @classmethod
    def input_shapes(cls, config: dict[str, Any]) -> list[tuple[Any, Any]]:
        return [(config.get("image_size"), cls.in_channels)]

    @property
    def head_only_adapt_from(self) -> int:
        return len(self.specs) + 2

    def config(self) -> dict[str, Any]:
        return {
            "architecture": "efficientnet_lite",
            "blocks": [list(spec) for spec in self.specs],
            "stem_channels": self.stem_channels,
            "head_channels": self.head_channels,
            "image_size": self.image_size,
            "padding": self.padding,
            "adapt_from": self.adapt_from,
            "lr_steps": self.lr_steps,
            "centred": self.centred,
            "prototype_head": self.prototype_head,
        }

    def _paddings(self) -> list[tuple[int, int]]:
        """Each unit's padding (stem, then each block's depthwise convolution) at this image size."""
        def pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
            return same_padding(size, kernel, stride) if self.padding == "same" else (kernel // 2, kernel // 2)

        size, pads = self.image_size, [pad(self.image_size, 3, 2)]
        size = conv_output_size(size, 2)
        for _, _, _, kernel, stride in self.specs:
            pads.append(pad(size, kernel, stride))
            size = conv_output_size(size, stride)
        return pads

    def unit_of(self, name: str) -> int | None:
        """The unit (see the module's docstring) parameter ``name`` belongs to; None for the head row and rates."""
        if name.startswith("stem"):
            return 0
        if name.startswith("blocks."):
            return 1 + int(name.split(".")[1])
        if name.startswith(("conv_head", "head_norm")):
            return len(self.specs) + 1
        return None

    def in_frozen_part(self, name: str) -> bool:
        unit = self.unit_of(name)
        return unit is not None and unit < self.adapt_from

    def _units(self, params: dict[str, Tensor], x: Tensor, units: range) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
        for unit in units:
            if unit == 0:
                x = relu6(conv_affine(params, "stem", "stem_norm", x, 2, self.pads[0]))
            elif unit <= len(self.specs):
                x = self._block(params, unit - 1, x)
            else:
                x = relu6(conv_affine(params, "conv_head", "head_norm", x))
        return x

    def _block(self, params: dict[str, Tensor], index: int, x: Tensor) -> Tensor:
        channels, expanded, out, _, stride = self.specs[index]
        prefix = f"blocks.{index}."
        h = x
        if expanded != channels:
            h = relu6(conv_affine(params, prefix + "expand", prefix + "expand_norm", h))
        h = relu6(conv_affine(params, prefix + "depthwise", prefix + "depthwise_norm", h, stride,
                              self.pads[index + 1], groups=expanded))
        h = conv_affine(params, prefix + "project", prefix + "project_norm", h)
        return h + x if stride == 1 and channels == out else h

    def frozen_part(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        h = self._units(params, x, range(self.adapt_from))
        return h.mean((2, 3)) if self.adapt_from == self.head_only_adapt_from else h

    def pooled_features(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        if self.adapt_from == self.head_only_adapt_from:  # the frozen part already pooled
            return h
        return self._units(params, h, range(self.adapt_from, self.head_only_adapt_from)).mean((2, 3))

    def embed(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """Pooled features ``[n, head_channels]`` (what nearest-mean compares and the centre averages)."""
        return self._units(params, x, range(self.head_only_adapt_from)).mean((2, 3))

    @torch.no_grad()
    def folded_features(self, params: dict[str, Tensor], x_support: Tensor | None = None) -> nn.Sequential:
        """:meth:`head_input` of images as a plain eval-mode network: each affine folded into its
        convolution's weights and bias, the "same" paddings as constants (serving and ONNX)."""
        layers: list[nn.Module] = [FrozenConv(folded(params, "stem", "stem_norm", 2, self.pads[0]), relu=True)]
        for index, (channels, expanded, out, _, stride) in enumerate(self.specs):
            prefix = f"blocks.{index}."
            expand = folded(params, prefix + "expand", prefix + "expand_norm") if expanded != channels else None
            depthwise = folded(params, prefix + "depthwise", prefix + "depthwise_norm", stride, self.pads[index + 1],
                               groups=expanded)
            project = folded(params, prefix + "project", prefix + "project_norm")
            layers.append(FrozenMBConv(expand, depthwise, project, residual=stride == 1 and channels == out))
        layers.append(FrozenConv(folded(params, "conv_head", "head_norm"), relu=True))
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.unit_length())


def check_blocks(blocks: Sequence[Sequence[int]], stem_channels: int, head_channels: int) -> list[BlockSpec]:
    """The block specs as tuples, after checking that they chain and are within the size limits."""
    if not isinstance(blocks, (list, tuple)) or not 1 <= len(blocks) <= MAX_BLOCKS:
        raise ValueError(f"EfficientNet-Lite needs 1 to {MAX_BLOCKS} blocks")
    for value, what in ((stem_channels, "stem_channels"), (head_channels, "head_channels")):
        if not _is_size(value):
            raise ValueError(f"{what} must be an integer in [1, {MAX_CHANNELS}], got {value!r}")
    specs, channels = [], stem_channels
    for index, block in enumerate(blocks):
        if not (isinstance(block, (list, tuple)) and len(block) == 5 and all(_is_size(v) for v in block[:3])
                and block[3] in (1, 3, 5, 7) and block[4] in (1, 2)):
            raise ValueError(f"block {index}: expected [in, expanded, out, kernel in 1/3/5/7, stride 1/2], "
                             f"got {block!r}")
        if block[0] != channels:
            raise ValueError(f"block {index} takes {block[0]} channels but receives {channels}")
        specs.append(tuple(block))
        channels = block[2]
    return specs


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CHANNELS


def relu6(x: Tensor) -> Tensor:
    return F.hardtanh(x, 0.0, 6.0)


def folded_weights(params: dict[str, Tensor], conv_key: str, norm_key: str) -> tuple[Tensor, Tensor]:
    """A convolution's weight and bias with the per-channel affine after it folded in: ``w * scale``
    per output channel, bias ``shift`` (differentiable, so training and serving fold alike)."""
    return params[conv_key + ".weight"] * params[norm_key + ".weight"].view(-1, 1, 1, 1), params[norm_key + ".bias"]


def conv_affine(params: dict[str, Tensor], conv_key: str, norm_key: str, x: Tensor, stride: int = 1,
                pad: tuple[int, int] = (0, 0), groups: int = 1) -> Tensor:
    """A "same"-padded convolution followed by its per-channel affine, computed as one convolution
    with the affine folded into its weights and bias: the same function (and gradient), at the cost
    of the convolution alone (the written-out affine measured 4.6x slower per image at 160x160)."""
    weight, bias = folded_weights(params, conv_key, norm_key)
    before, after = pad
    if before != after:
        x, before = F.pad(x, (before, after, before, after)), 0
    return F.conv2d(x, weight, bias, stride=stride, padding=before, groups=groups)


def folded(params: dict[str, Tensor], conv_key: str, norm_key: str, stride: int = 1,
           pad: tuple[int, int] = (0, 0), groups: int = 1) -> nn.Module:
    """:func:`conv_affine` as a plain layer (serving and ONNX): its folded weights copied into a convolution."""
    weight, bias = folded_weights(params, conv_key, norm_key)
    before, after = pad
    symmetric = before == after
    layer = skip_init(nn.Conv2d, weight.shape[1] * groups, weight.shape[0], weight.shape[-1], stride=stride,
                      padding=before if symmetric else 0, groups=groups, device=weight.device, dtype=weight.dtype)
    layer.weight.copy_(weight)
    layer.bias.copy_(bias)
    return layer if symmetric else nn.Sequential(nn.ZeroPad2d((before, after, before, after)), layer)


class FrozenConv(nn.Module):
    """A folded convolution, optionally followed by ReLU6 (in place: its output is used once)."""

    def __init__(self, layer: nn.Module, relu: bool) -> None:
        super().__init__()
        self.layer, self.relu = layer, relu

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer(x)
        return F.hardtanh_(h, 0.0, 6.0) if self.relu else h


class FrozenMBConv(nn.Module):
    """One inverted-residual block with its affines folded into its convolutions (serving and ONNX)."""

    def __init__(self, expand: nn.Module | None, depthwise: nn.Module, project: nn.Module, residual: bool) -> None:
        super().__init__()
        self.expand, self.depthwise, self.project, self.residual = expand, depthwise, project, residual

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.expand is None else F.hardtanh_(self.expand(x), 0.0, 6.0)
        h = self.project(F.hardtanh_(self.depthwise(h), 0.0, 6.0))
        return h.add_(x) if self.residual else h
