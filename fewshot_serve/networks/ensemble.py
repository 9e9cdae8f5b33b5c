"""Several pretrained backbones side by side, one shared head over their features.

Independently pretrained backbones make different errors, so their features together separate
new classes better than any one of them: on Omniglot's validation alphabets, two narrow
backbones (widths 12-24-44-84, 0.91 MB each) concatenated classified 20-way 1-shot tasks by
nearest class mean 0.31 points better than one backbone of widths 16-32-64-120, at
the same file size and about the same work per image; eight such backbones, stored as int8
(:func:`~fewshot_serve.files.model_file.store_weights`) to stay within 2 MB, are the shipped handwriting
model (models/cards/omniglot-resnet12.md). Averaging several classifiers' probabilities
would need as many heads and inner loops; one head over the concatenation needs one of each, and
keeps the one inner loop, Proto-MAML and the ONNX export as they are.

The members are the frozen part: each computes its unit-length (optionally centred) features
exactly as it would on its own, and the concatenation is scaled by ``1/sqrt(members)`` to unit
length, so the head sees features like a single ResNet-12's and each member weighs the same.
Only the head is adapted and meta-learned (a head-only inner loop over the cached features,
``train --freeze-body``). Members must be pretrained (fixed norm): support-set statistics would
make each image's features depend on the others'. Members may be of different architectures
(ResNet-12s trained here, imported EfficientNet-Lites) as long as they take the same input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .base import (
    ENSEMBLE_OWNED_KEYS,
    MetaNetwork,
    PooledFeatureClassifier,
    SharedHeadClassifier,
    adapts_head_only,
    folded_head,
)
from .config_checks import is_flag, key_problems, step_count_problems
from .efficientnet_lite import EfficientNetLite
from .resnet12 import ResNet12

#: What an ensemble's member may be.
MEMBER_ARCHITECTURES = {"resnet12": ResNet12, "efficientnet_lite": EfficientNetLite}
MAX_MEMBERS = 8

MEMBER_PREFIX = "members."


class FeatureEnsemble(SharedHeadClassifier):

    #: As a pretrained backbone adapting its head only: each image's features are computed on their own.
    norm, adapt_from = "fixed", 4

    def __init__(self, members: Sequence[dict[str, Any]], lr_steps: int = 0, prototype_head: bool = False) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        built = [build_member(index, member) for index, member in enumerate(members)]
        inputs = {(net.in_channels, net.image_size) for net in built}
        if len(inputs) != 1:
            raise ValueError(f"ensemble members must take the same input; got (channels, size) {sorted(inputs)}")
        for net in built:  # a member contributes features only: the ensemble's own head classifies
            del net.head, net.logit_scale
        self.members = nn.ModuleList(built)
        (self.in_channels, self.image_size), = inputs
        self.feature_dim = sum(net.feature_dim for net in built)
        self.head = nn.Linear(self.feature_dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.logit_scale = nn.Parameter(torch.ones(()))  # learned by the outer loop only, as ResNet-12's
        self.add_step_lrs(lr_steps)
        self.prototype_head = prototype_head

    @classmethod
    def config_problems(cls, config: dict[str, Any]) -> list[str]:
        """Its keys and its members' own; what a member may be (a pretrained backbone) is checked as it is built."""
        problems = key_problems(config, {"members"}, {"lr_steps", "prototype_head"})
        if problems:
            return problems
        members = config["members"]
        if not (isinstance(members, list) and 2 <= len(members) <= MAX_MEMBERS and is_flag(config, "prototype_head")
                and all(isinstance(m, dict) and m.get("architecture") in MEMBER_ARCHITECTURES for m in members)):
            return [f"ensemble needs 2 to {MAX_MEMBERS} members of {', '.join(MEMBER_ARCHITECTURES)} and "
                    "prototype_head true or false"]
        problems = step_count_problems(config)
        for index, member in enumerate(members):
            own = MEMBER_ARCHITECTURES[member["architecture"]].member_config_problems(member)
            problems += [f"member {index}: {problem}" for problem in own]
        return problems

    @classmethod
    def input_shapes(cls, config: dict[str, Any]) -> list[tuple[Any, Any]]:
        return [shape for m in config["members"] for shape in MEMBER_ARCHITECTURES[m["architecture"]].input_shapes(m)]

    def config(self) -> dict[str, Any]:
        return {
            "architecture": "ensemble",
            "members": [member_config(net) for net in self.members],
            "lr_steps": self.lr_steps,
            **({"prototype_head": True} if self.prototype_head else {}),
        }

    def in_frozen_part(self, name: str) -> bool:
        return name.startswith(MEMBER_PREFIX)

    def _is_fast_weight(self, name: str) -> bool:
        return name not in ("step_lrs", "logit_scale") and not self.in_frozen_part(name)

    def _member_params(self, params: dict[str, Tensor], index: int) -> dict[str, Tensor]:
        prefix = f"{MEMBER_PREFIX}{index}."
        return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}

    def embed(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        """The unit-length concatenated features ``[n, feature_dim]`` (what nearest-mean compares)."""
        parts = []
        for index, member in enumerate(self.members):
            own = self._member_params(params, index)
            parts.append(member.head_input(own, member.frozen_part(own, x)))
        return torch.cat(parts, dim=1) / math.sqrt(len(parts))

    def frozen_part(self, params: dict[str, Tensor], x: Tensor, n_ref: int | None = None) -> Tensor:
        return self.embed(params, x)

    def head_input(self, params: dict[str, Tensor], h: Tensor, n_ref: int | None = None) -> Tensor:
        return h

    head_logits = PooledFeatureClassifier.head_logits  # the same head: a learned row per class, times the logit scale

    @torch.no_grad()
    def fold(self, params: dict[str, Tensor], x_support: Tensor) -> nn.Module:
        """The adapted classifier as a plain eval-mode network, images -> logits (exports to ONNX)."""
        bodies = [member.folded_features(self._member_params(params, i), x_support)
                  for i, member in enumerate(self.members)]
        folded = nn.Sequential(ConcatenatedFeatures(bodies), folded_head(params))
        return folded.eval().to(memory_format=torch.channels_last)


def build_member(index: int, member: dict[str, Any]) -> PooledFeatureClassifier:
    """Member ``index`` from its config, refused (naming it) unless it is a pretrained backbone adapting nothing."""
    settings = dict(member)
    architecture = settings.pop("architecture", None)
    if architecture not in MEMBER_ARCHITECTURES:
        raise ValueError(f"member {index}: a member is one of {', '.join(MEMBER_ARCHITECTURES)}, got {architecture!r}")
    net = MEMBER_ARCHITECTURES[architecture](**settings)
    if net.norm != "fixed" or not adapts_head_only(net) or net.lr_steps or net.prototype_head:
        raise ValueError(f"member {index}: a member is a pretrained backbone: norm 'fixed', adapting the head only, "
                         "no learned learning rates and no prototype head")
    return net


def member_config(network: MetaNetwork) -> dict[str, Any]:
    """A member's config without what belongs to the ensemble (learned rates, head)."""
    return {k: v for k, v in network.config().items() if k not in ENSEMBLE_OWNED_KEYS}


class ConcatenatedFeatures(nn.Module):
    """Each body's unit features side by side, scaled to unit length overall (exports to ONNX)."""

    def __init__(self, bodies: Sequence[nn.Module]) -> None:
        super().__init__()
        self.bodies = nn.ModuleList(bodies)
        self.scale = 1 / math.sqrt(len(bodies))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([body(x) for body in self.bodies], dim=1) * self.scale
